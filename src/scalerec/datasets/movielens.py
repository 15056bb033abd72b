"""MovieLens (ML-100K, ML-1M/10M/20M "::" files, ml-latest CSVs): import presets recognised by file
name, registered as ``--preset movielens``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scalerec.data.coerce import pack_map, parse_number, to_text
from scalerec.data.importers.presets import Preset, register_preset
from scalerec.data.importers.sources import SourceSpec, compression_of, first_line, strip_compression
from scalerec.errors import DataImportError

__all__ = ["MOVIELENS_FILES", "resolve"]

NAME = "movielens"
_NULL = pa.scalar(None, pa.string())

_ML_GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
#: ML-1M users.dat occupation codes (its README).
_ML_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)


def _dat(*names: str, encoding: str | None = None) -> SourceSpec:
    return SourceSpec("csv", "\x1f", column_names=names, quoting=False, multi_delimiter="::", encoding=encoding)


def _title_year(title: pa.Array | pa.ChunkedArray) -> pa.Array:
    return pc.struct_field(pc.extract_regex(to_text(title), r"\((?P<year>\d{4})\)\s*$"), [0])


def _movie_post(src: pa.Table, mapped: pa.Table) -> pa.Table:
    """Genres "(no genres listed)" mean none; the year in "Title (1995)" becomes attributes.year."""
    genres = to_text(mapped.column("categories"))
    genres = pc.if_else(pc.equal(genres, "(no genres listed)"), _NULL, genres)
    out = mapped.set_column(mapped.column_names.index("categories"), "categories", genres)
    return out.append_column("attributes", pack_map(out.num_rows, {"year": _title_year(out.column("title"))}))


def _uitem_post(src: pa.Table, mapped: pa.Table) -> pa.Table:
    """u.item: 19 genre flags -> categories; year, release date and IMDb URL -> attributes."""
    n = src.num_rows
    flags = np.column_stack([
        pc.fill_null(pc.equal(pc.utf8_trim_whitespace(to_text(src.column(g))), "1"), False).to_numpy(zero_copy_only=False)
        for g in _ML_GENRES_100K
    ]) if n else np.zeros((0, len(_ML_GENRES_100K)), dtype=bool)
    flags[:, 0] = False  # "unknown" is not a genre
    rows, cols = np.nonzero(flags)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    names = pa.array(list(_ML_GENRES_100K), pa.string())
    categories = pa.ListArray.from_arrays(pa.array(offsets), names.take(pa.array(cols, pa.int64())))
    attributes = pack_map(n, {"year": _title_year(mapped.column("title")), "release_date": src.column("release_date"), "imdb_url": src.column("imdb_url")})
    out = mapped.append_column("categories", categories)
    return out.append_column("attributes", attributes)


def _ml_users_post(src: pa.Table, mapped: pa.Table) -> pa.Table:
    """users.dat: gender, age band, occupation (codes 0-20 as their names) and zip code as attributes."""
    code, _ = parse_number(src.column("Occupation"))
    c = code.to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        known = np.isfinite(c) & (c >= 0) & (c < len(_ML_OCCUPATIONS)) & (c == np.round(c))
    names = pa.array(list(_ML_OCCUPATIONS), pa.string())
    occupation = names.take(pa.array(np.where(known, c, 0).astype(np.int64), mask=~known))
    return mapped.append_column("attributes", pack_map(mapped.num_rows, {
        "gender": src.column("Gender"), "age": src.column("Age"), "occupation": occupation, "zip": src.column("Zip"),
    }))


_RATING = {"event_type": "rating"}
_ML_RATINGS = {"user_id": "user", "item_id": "item", "value": "rating", "timestamp": "timestamp"}

#: MovieLens files by name (ML-100K, ML-1M/10M/20M "::" files, ml-latest CSVs).
MOVIELENS_FILES: dict[str, Preset] = {
    "ratings.dat": Preset(NAME, "events", _dat("user", "item", "rating", "timestamp"),
                          _ML_RATINGS, _RATING, "unix"),
    "ratings.csv": Preset(NAME, "events", SourceSpec("csv", ","),
                          {"user_id": "userId", "item_id": "movieId", "value": "rating", "timestamp": "timestamp"},
                          _RATING, "unix"),
    "u.data": Preset(NAME, "events", SourceSpec("csv", "\t", column_names=("user", "item", "rating", "timestamp")),
                     _ML_RATINGS, _RATING, "unix"),
    "movies.dat": Preset(NAME, "items", _dat("movie", "title", "genres"),
                         {"item_id": "movie", "title": "title", "categories": "genres"}, post=_movie_post),
    "movies.csv": Preset(NAME, "items", SourceSpec("csv", ","),
                         {"item_id": "movieId", "title": "title", "categories": "genres"}, post=_movie_post),
    "u.item": Preset(NAME, "items",
                     SourceSpec("csv", "|", column_names=("movie", "title", "release_date", "video_release_date", "imdb_url")
                                + _ML_GENRES_100K, quoting=False, encoding="latin-1"),
                     {"item_id": "movie", "title": "title"}, post=_uitem_post,
                     post_columns=("release_date", "imdb_url") + _ML_GENRES_100K),
    "users.dat": Preset(NAME, "users", _dat("user", "Gender", "Age", "Occupation", "Zip"),
                        {"user_id": "user"}, post=_ml_users_post, post_columns=("Gender", "Age", "Occupation", "Zip")),
    "u.user": Preset(NAME, "users", SourceSpec("csv", "|", column_names=("user", "age", "gender", "occupation", "zip"),
                                                       quoting=False),
                     {"user_id": "user", "attributes.age": "age", "attributes.gender": "gender",
                      "attributes.occupation": "occupation", "attributes.zip": "zip"}),
}


def _by_content(path: Path) -> str | None:
    """The MovieLens file name whose layout the first line has (renamed or re-compressed copies)."""
    line = first_line(path, compression_of(path)).decode("latin-1")
    if "::" in line:
        fields = line.split("::")
        numeric = [f.strip().isdigit() for f in fields]
        if len(fields) == 4 and all(numeric):
            return "ratings.dat"
        if len(fields) == 3 and numeric[0]:
            return "movies.dat"
        if len(fields) == 5 and numeric[0] and fields[1] in ("M", "F"):
            return "users.dat"
        return None
    header = [c.strip().strip('"') for c in line.split(",")]
    if header[:3] == ["userId", "movieId", "rating"]:
        return "ratings.csv"
    if header == ["movieId", "title", "genres"]:
        return "movies.csv"
    tabbed = line.split("\t")
    if len(tabbed) == 4 and all(f.strip().isdigit() for f in tabbed):
        return "u.data"
    piped = line.split("|")
    if len(piped) == 5 + len(_ML_GENRES_100K) and piped[0].isdigit():
        return "u.item"
    if len(piped) == 5 and piped[0].isdigit() and piped[2] in ("M", "F"):
        return "u.user"
    return None


def resolve(kind: str, path: Path) -> Preset:
    """The MovieLens preset of this file, recognised by its name (compression suffixes aside), else by
    its first line's layout."""
    preset = MOVIELENS_FILES.get(strip_compression(path.name))
    if preset is None:
        like = _by_content(path) if path.is_file() else None
        preset = MOVIELENS_FILES.get(like) if like else None
    if preset is None:
        known = ", ".join(MOVIELENS_FILES)
        raise DataImportError(
            f"--preset movielens recognises the files {known} by name or by their first line; {path.name!r} "
            "looks like none of them. Import it with --map"
        )
    if preset.kind != kind:
        raise DataImportError(
            f"{path.name} holds MovieLens {preset.kind}, not {kind}; run `scalerec import {preset.kind} {path.name} "
            "--preset movielens`"
        )
    return preset


register_preset(
    NAME, resolve, aliases=("ml",),
    help="ratings.dat/.csv, u.data, movies.dat/.csv, u.item, users.dat, u.user: recognised by name or content",
)
