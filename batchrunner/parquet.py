"""Records out as a Parquet file, a row group at a time: a job of any size is written with the
memory of one group, and every group has the schema decided before the first (so a column
whose first values are all empty is still the type its later values need).

pyarrow is an optional extra (`batchrunner[tables]`): it is imported only when a Parquet file
is written, and its absence is one line saying what to install.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import IO, Any

from batchrunner.errors import UsageError

TEXT, INT, FLOAT, BOOL = "text", "int", "float", "bool"  # what a column holds
ROWS_PER_GROUP = 5_000
MISSING_PYARROW = (
    "writing Parquet needs pyarrow, which is not installed: pip install 'batchrunner[tables]'"
)


def _pyarrow() -> Any:
    """The pyarrow modules, or the UsageError that names the extra to install."""
    try:
        import pyarrow  # type: ignore[import-untyped,unused-ignore]
        import pyarrow.parquet  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise UsageError(MISSING_PYARROW) from None
    return pyarrow


def require_pyarrow() -> None:
    """Fail before anything is written (or read) when Parquet cannot be written."""
    _pyarrow()


def write_parquet(
    columns: Sequence[tuple[str, str]],
    rows: Iterable[Sequence[Any]],
    out: IO[bytes],
    rows_per_group: int = ROWS_PER_GROUP,
) -> int:
    """Write `rows` (values in the order of `columns`, each a name and a kind) to `out`, one
    row group per `rows_per_group` rows; return how many rows."""
    pa = _pyarrow()
    types = {TEXT: pa.string(), INT: pa.int64(), FLOAT: pa.float64(), BOOL: pa.bool_()}
    schema = pa.schema([(name, types[kind]) for name, kind in columns])
    count = 0
    with pa.parquet.ParquetWriter(out, schema) as writer:
        group: list[Sequence[Any]] = []
        for row in rows:
            group.append(row)
            if len(group) >= rows_per_group:
                writer.write_table(_table(pa, schema, group), row_group_size=rows_per_group)
                count += len(group)
                group = []
        if group or count == 0:  # an empty job still gets a file with its schema
            writer.write_table(_table(pa, schema, group), row_group_size=rows_per_group)
            count += len(group)
    return count


def _table(pa: Any, schema: Any, group: list[Sequence[Any]]) -> Any:
    arrays = [
        pa.array([row[index] for row in group], type=field.type)
        for index, field in enumerate(schema)
    ]
    return pa.Table.from_arrays(arrays, schema=schema)
