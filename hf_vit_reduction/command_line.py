"""The argument parser every command of the project uses: a bad flag ends with one line, `error: ...`, and
argparse's exit status for usage errors (2), without the usage block."""

import argparse


class CommandParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message}\n")
