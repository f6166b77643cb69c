"""Source errors, importable without the source's client library (alpaca-py costs ~0.5 s to import,
which every micro-batch run process would otherwise pay)."""


class AlpacaSourceError(ValueError):
    """Alpaca data could not be fetched; the message is one line and never contains the keys."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
