"""The SQLAlchemy dialect (``shardwise.sqlalchemy_dialect``) and pandas through it, against
a real (embedded) cluster reached by a ``shardwise:///DIR`` URL (issue 18, point 12):
``read_sql`` without a warning, ``to_sql`` with ``if_exists`` fail / replace / append,
round trips of every dtype pandas sends, and plain SQLAlchemy Core."""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")
pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")

from shardwise.embedded import EmbeddedCluster  # noqa: E402
from shardwise.sqlalchemy_dialect import (  # noqa: E402
    ShardwiseDialect,
    distribution_column,
    reflected_type,
)

pytestmark = pytest.mark.timeout(300)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("sqla")
    with EmbeddedCluster(groups=2, replicas=1, controllers=1, data_dir=root / "data") as cluster:
        cluster.describe(root / "cluster")
        yield root / "cluster"


@pytest.fixture(scope="module")
def engine(cluster_dir: Path) -> Iterator[Any]:
    engine = sa.create_engine(f"shardwise:///{cluster_dir}")  # an absolute path: ////
    yield engine
    engine.dispose()


def frame_of_every_dtype(rng: Any) -> Any:
    count = 40
    ints = rng.integers(INT64_MIN, INT64_MAX, size=count, dtype=np.int64, endpoint=True)
    ints[:3] = [INT64_MIN, INT64_MAX, 0]
    floats = rng.normal(size=count)
    floats[3] = np.nan
    texts: list[str | None] = [f"héllo ✓ {i} 日本" for i in range(count)]
    texts[5] = None
    stamps = pd.Series(
        pd.to_datetime("2024-02-29 23:59:59.123456") + pd.to_timedelta(np.arange(count), "h")
    )
    stamps[6] = pd.NaT
    return pd.DataFrame(
        {
            "i": ints,
            "f": floats,
            "s": pd.Series(texts, dtype=object),
            "b": rng.integers(0, 2, size=count).astype(bool),
            "t": stamps,
            "raw": [bytes([i, 255 - i, 0]) if i != 7 else None for i in range(count)],
        }
    )


def test_to_sql_and_read_sql_round_trip_every_dtype(engine: Any, rng: Any) -> None:
    frame = frame_of_every_dtype(np.random.default_rng(rng.getrandbits(32)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pandas warned on every call without SQLAlchemy
        frame.to_sql("every_dtype", engine, if_exists="fail", dtype={"raw": sa.LargeBinary})
        back = pd.read_sql('SELECT * FROM every_dtype ORDER BY "index"', engine, index_col="index")
        table = pd.read_sql_table("every_dtype", engine, index_col="index").sort_index()
    for read in (back, table):
        assert list(read.index) == list(range(len(frame)))
        assert read["i"].tolist() == frame["i"].tolist()  # 64-bit edges exact
        assert read["f"].equals(frame["f"])  # NaN back as NaN (stored NULL)
        assert read["s"].tolist()[:5] == frame["s"].tolist()[:5] and pd.isna(read["s"][5])
        assert read["raw"].tolist() == frame["raw"].tolist()
        # Booleans are SQLite's 0 and 1 (the catalog keeps the INTEGER affinity).
        assert read["b"].astype(bool).tolist() == frame["b"].tolist()
    # A query's timestamps are ISO 8601 text (pandas parses them on request); a table
    # read knows the column's type and gives datetimes back.
    assert back["t"][0] == "2024-02-29 23:59:59.123456"
    parsed = pd.read_sql("SELECT t FROM every_dtype", engine, parse_dates={"t": "ISO8601"})
    assert sorted(parsed["t"].dropna()) == sorted(frame["t"].dropna())
    assert table["t"].tolist()[:6] == frame["t"].tolist()[:6] and pd.isna(table["t"][6])


def test_to_sql_if_exists_fail_replace_append(engine: Any) -> None:
    first = pd.DataFrame({"k": ["a", "b"], "v": [1.5, 2.5]})
    assert first.to_sql("modes", engine, index=False) == 2
    with pytest.raises(ValueError, match="already exists"):
        first.to_sql("modes", engine, index=False, if_exists="fail")
    assert first.to_sql("modes", engine, index=False, if_exists="append") == 2
    assert pd.read_sql("SELECT count(*) AS n FROM modes", engine)["n"][0] == 4
    other = pd.DataFrame({"k": ["x"], "w": [7]})  # another shape: a new table
    other.to_sql("modes", engine, index=False, if_exists="replace")
    back = pd.read_sql("SELECT * FROM modes", engine)
    assert list(back.columns) == ["k", "w"] and back.values.tolist() == [["x", 7]]
    assert sa.inspect(engine).get_columns("modes")[1]["name"] == "w"


def test_aware_datetimes_are_stored_in_utc(engine: Any) -> None:
    stamps = pd.to_datetime(["2024-03-01 12:00:00"]).tz_localize("Europe/Paris")
    pd.DataFrame({"id": [1], "at": stamps}).to_sql("aware", engine, index=False)
    text = pd.read_sql("SELECT at FROM aware", engine)["at"][0]
    assert text == "2024-03-01 11:00:00+00:00"
    table = pd.read_sql_table("aware", engine)
    assert table["at"][0] == pd.Timestamp("2024-03-01 11:00:00", tz="UTC")


def test_core_select_insert_and_text(engine: Any) -> None:
    metadata = sa.MetaData()
    users = sa.Table(
        "core_users",
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("born", sa.Date),
        sa.Index("core_users_by_name", "name"),
    )
    metadata.create_all(engine)
    with engine.connect() as conn:
        conn.execute(
            users.insert(),
            [
                {"id": 1, "name": "ada", "score": 9.5, "born": dt.date(1815, 12, 10)},
                {"id": 2, "name": "alan", "score": None, "born": dt.date(1912, 6, 23)},
                {"id": INT64_MAX, "name": "max", "score": 1.0, "born": None},
            ],
        )
        conn.execute(users.insert().values(id=3, name="grace", score=7.0))
        conn.commit()
        rows = conn.execute(
            sa.select(users.c.id, users.c.name, users.c.born)
            .where(users.c.id.in_([1, 2, INT64_MAX]))
            .order_by(users.c.id)
        ).all()
        assert rows == [
            (1, "ada", dt.date(1815, 12, 10)),
            (2, "alan", dt.date(1912, 6, 23)),
            (INT64_MAX, "max", None),
        ]
        top = conn.execute(
            sa.select(users.c.name).order_by(users.c.score.desc()).limit(2).offset(1)
        ).scalars()
        assert list(top) == ["grace", "max"]
        counted = conn.execute(
            sa.text("SELECT count(*) FROM core_users WHERE score > :low"), {"low": 5}
        ).scalar_one()
        assert counted == 2
        changed = conn.execute(
            sa.update(users).where(users.c.name == sa.bindparam("who")).values(score=0.0),
            {"who": "alan"},
        )
        assert changed.rowcount == 1
        with pytest.raises(
            sa.exc.IntegrityError, match=r"UNIQUE constraint failed: core_users\.id"
        ):
            conn.execute(users.insert().values(id=1, name="again"))
    inspector = sa.inspect(engine)
    assert inspector.has_table("core_users") and not inspector.has_table("nope")
    assert "core_users" in inspector.get_table_names()
    assert inspector.get_pk_constraint("core_users")["constrained_columns"] == ["id"]
    assert [i["name"] for i in inspector.get_indexes("core_users")] == ["core_users_by_name"]
    columns = {c["name"]: c for c in inspector.get_columns("core_users")}
    assert not columns["name"]["nullable"] and columns["score"]["nullable"]
    assert isinstance(columns["born"]["type"], sa.Date)
    reflected = sa.Table("core_users", sa.MetaData(), autoload_with=engine)
    assert [c.name for c in reflected.primary_key.columns] == ["id"]
    reflected.drop(engine)
    assert not sa.inspect(engine).has_table("core_users")


def test_create_table_names_the_distribution_column() -> None:
    dialect = ShardwiseDialect()

    def ddl(table: Any) -> str:
        return str(sa.schema.CreateTable(table).compile(dialect=dialect)).strip()

    md = sa.MetaData()
    keyed = sa.Table(
        "keyed", md, sa.Column("v", sa.Float), sa.Column("id", sa.Integer, primary_key=True)
    )
    assert ddl(keyed).endswith("WITH (distribution = 'id', keyspace = 'default')")
    floats_first = sa.Table("f", md, sa.Column("x", sa.Float), sa.Column("name", sa.Text))
    assert distribution_column(floats_first, dialect) == "name"
    chosen = sa.Table(
        "c",
        md,
        sa.Column("a", sa.Integer),
        sa.Column("it's", sa.Text),
        shardwise_distribution="it's",
        shardwise_keyspace="events",
    )
    assert ddl(chosen).endswith("WITH (distribution = 'it''s', keyspace = 'events')")
    reference = sa.Table("r", md, sa.Column("x", sa.Float), shardwise_reference=True)
    assert ddl(reference).endswith("WITH (reference = true, keyspace = 'default')")
    only_floats = sa.Table("o", md, sa.Column("x", sa.Float))
    with pytest.raises(sa.exc.CompileError, match="distribute"):
        ddl(only_floats)
    parent = sa.Table("p", md, sa.Column("id", sa.Integer, primary_key=True))
    child = sa.Table("ch", md, sa.Column("id", sa.Integer, sa.ForeignKey(parent.c.id)))
    with pytest.raises(sa.exc.CompileError, match="foreign keys"):
        ddl(child)


def test_urls_name_a_directory_or_description(cluster_dir: Path) -> None:
    dialect = ShardwiseDialect()
    url = sa.engine.make_url
    assert dialect.create_connect_args(url("shardwise://")) == ([None], {})
    assert dialect.create_connect_args(url("shardwise:///rel/dir?deadline_s=2.5")) == (
        ["rel/dir"],
        {"deadline_s": 2.5},
    )
    with pytest.raises(sa.exc.ArgumentError, match="not a host"):
        dialect.create_connect_args(url("shardwise://10.0.0.1:7100/x"))
    with pytest.raises(sa.exc.ArgumentError, match="unknown shardwise URL option"):
        dialect.create_connect_args(url("shardwise:///x?secret=1"))
    engine = sa.create_engine(f"shardwise:///{cluster_dir / 'cluster.toml'}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1 + 1")).scalar_one() == 2
    engine.dispose()


@pytest.mark.parametrize(
    ("declared", "kind"),
    [
        ("INTEGER", sa.INTEGER),
        ("TEXT(10)", sa.TEXT),
        ("REAL", sa.REAL),
        ("TIMESTAMP", sa.TIMESTAMP),
        ("DATE", sa.DATE),
        ("BLOB", sa.BLOB),
        ("NUMERIC", sa.NUMERIC),
        ("UNSIGNED BIG INT", sa.INTEGER),  # by SQLite's affinity
        ("", sa.types.NullType),
    ],
)
def test_reflected_types(declared: str, kind: type) -> None:
    assert type(reflected_type(declared)) is kind


def test_the_pandas_extra_and_the_entry_point_are_declared() -> None:
    """``make up`` installs no extra (tests/test_packaging.py); these are opt-in."""
    import tomllib  # noqa: PLC0415

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    for extra in ("pandas", "dev"):
        names = {r.split(">")[0].split("=")[0].strip() for r in extras[extra]}
        assert {"sqlalchemy", "pandas"} <= names, extra
    assert "sqlalchemy" not in " ".join(project["project"]["dependencies"])
    dialects = project["project"]["entry-points"]["sqlalchemy.dialects"]
    assert dialects == {"shardwise": "shardwise.sqlalchemy_dialect:ShardwiseDialect"}
    assert sa.create_engine("shardwise://").dialect.name == "shardwise"
