"""Turn a user-fixable source problem into a one-line Dagster failure (no library traceback)."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from quant.validation import ValidationInputError
from resources.market_data import SourceConfigError
from resources.sources.errors import AlpacaSourceError
from resources.sources.files import InputFileError

USER_ERRORS = (AlpacaSourceError, InputFileError, SourceConfigError, ValidationInputError)


@contextmanager
def source_errors_as_failures() -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as exc:
        raise dg.Failure(description=str(exc).strip().splitlines()[0], allow_retries=False) from None
