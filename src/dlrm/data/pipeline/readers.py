"""Readers that build one Arrow table from several files (MovieLens-100K)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from dlrm.data.pipeline.metadata import DataError


def read_movielens(folder: Path) -> tuple[pa.Table, np.ndarray]:
    """u.data joined with u.user and u.item, genres as '|'-joined names; lines of u.data."""
    for name in ("u.data", "u.user", "u.item", "u.genre"):
        if not (folder / name).is_file():
            raise DataError(f"{folder / name}: MovieLens-100K file missing")

    def read(name: str, names: list[str], delimiter: str) -> pa.Table:
        try:
            return pacsv.read_csv(
                folder / name,
                read_options=pacsv.ReadOptions(column_names=names, encoding="latin-1"),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False),
                convert_options=pacsv.ConvertOptions(column_types={n: pa.string()
                                                                   for n in names},
                                                     strings_can_be_null=False))
        except (OSError, pa.ArrowInvalid) as err:
            raise DataError(f"{folder / name}: {err}") from None

    ratings = read("u.data", ["user", "item", "rating", "timestamp"], "\t")
    ratings = ratings.append_column("__line", pa.array(np.arange(1, ratings.num_rows + 1)))
    users = read("u.user", ["user", "age", "gender", "occupation", "zip"], "|")
    genre_names = read("u.genre", ["genre", "index"], "|")["genre"].to_pylist()
    items = read("u.item", ["item", "title", "release", "video_release", "url",
                            *[f"g{k}" for k in range(len(genre_names))]], "|")
    flags = np.stack([np.asarray(items[f"g{k}"].to_pylist()) == "1"
                      for k in range(len(genre_names))], axis=1)  # (items, genres)
    names = np.asarray(genre_names, dtype=object)
    genres = ["|".join(names[row]) for row in flags]  # one entry per movie (1,682)
    items = pa.table({"item": items["item"], "genres": pa.array(genres, pa.string())})
    joined = ratings.join(users, "user", join_type="left outer").join(
        items, "item", join_type="left outer")
    joined = joined.sort_by("__line")
    lines = joined["__line"].to_numpy()
    for col in ("age", "gender", "occupation", "zip", "genres"):
        joined = joined.set_column(joined.column_names.index(col), col,
                                   pc.fill_null(joined[col], ""))
    return joined.drop_columns(["__line"]), lines
