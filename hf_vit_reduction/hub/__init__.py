"""Publishing to the Hub: pushes (final and in the background during training) and model cards."""
