"""``PARCOURS_WAREHOUSE_<NAME>_*`` settings (SPEC §15): names lower-cased, URL required."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.config import Config, WarehouseConfig, warehouses_from_env


def test_warehouses_are_read_from_env_and_overrides(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path) -> None:
    monkeypatch.setenv("PARCOURS_WAREHOUSE_SHOP_DW_URL", "duckdb:///shop.duckdb")
    monkeypatch.setenv("PARCOURS_WAREHOUSE_SHOP_DW_TIMEOUT_SECONDS", "60")
    monkeypatch.setenv("PARCOURS_WAREHOUSE_NOURL_TIMEOUT_SECONDS", "5")  # no URL: ignored
    config = Config.load({"WAREHOUSE_CH_URL": "chdb:///ch", "WAREHOUSE_CH_SYNC_EVENTS": "1",
                          "SECRET_KEY": "x", "INSTANCE_PATH": str(tmp_path)})
    expected = (WarehouseConfig("ch", "chdb:///ch", timeout_seconds=300.0, sync_events=True),
                WarehouseConfig("shop_dw", "duckdb:///shop.duckdb", timeout_seconds=60.0,
                                sync_events=False))
    warehouses = config.WAREHOUSES
    assert warehouses == expected
    assert "WAREHOUSE_CH_URL" not in config.extra
    assert [w.name for w in warehouses_from_env()] == ["shop_dw"]


def test_engine_settings_come_from_the_dialect_defaults_then_env(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from sqlalchemy import text

    from experiments.services.warehouses.engines import _make_engine

    monkeypatch.setenv("PARCOURS_WAREHOUSE_DW_URL", f"duckdb:///{tmp_path / 'dw.duckdb'}")
    monkeypatch.setenv("PARCOURS_WAREHOUSE_DW_SETTINGS", "threads=1, memory_limit=300MB")
    [config] = warehouses_from_env()
    assert config.settings == (("threads", "1"), ("memory_limit", "300MB"))
    engine = _make_engine(config)
    with engine.connect() as connection:
        current = dict(connection.execute(text(
            "SELECT name, value FROM duckdb_settings() WHERE name IN "
            "('threads', 'memory_limit', 'preserve_insertion_order', 'disabled_optimizers')"
        )).all())
    engine.dispose()
    assert current["threads"] == "1" and current["preserve_insertion_order"] == "false"
    assert current["disabled_optimizers"] == "build_side_probe_side"  # joins as written
    assert current["memory_limit"] == "286.1 MiB"  # 300 MB
    monkeypatch.setenv("PARCOURS_WAREHOUSE_DW_SETTINGS", "threads")
    with pytest.raises(ValueError, match="name=value"):
        warehouses_from_env()


def test_chdb_joins_by_partial_merge_and_spills_its_group_bys() -> None:
    """chDB runs in the Parcours process: its defaults bound a report's memory (SPEC §9),
    keep the join sides as the pipeline writes them (exposures on the build side: swapped,
    a first report held every event column it read) and compile no expressions (they
    slowed every statement once its embedded server had restarted a few times in the
    process: bench/bench_warehouse.py)."""
    from sqlalchemy import text

    from experiments.services.warehouses.engines import _make_engine

    engine = _make_engine(WarehouseConfig("ch", "chdb:///:memory:"))
    with engine.connect() as connection:
        current = {name: connection.scalar(text(f"SELECT getSetting('{name}')"))
                   for name in ("join_algorithm", "max_bytes_before_external_group_by",
                                "compile_expressions", "compile_aggregate_expressions",
                                "query_plan_join_swap_table")}
    engine.dispose()
    assert current == {"join_algorithm": "partial_merge",
                       "max_bytes_before_external_group_by": 50000000,
                       "compile_expressions": False, "compile_aggregate_expressions": False,
                       "query_plan_join_swap_table": False}


def test_statements_over_kept_values_hash_on_chdb_and_bound_duckdb_unless_settings_chose(
        tmp_path: Path) -> None:
    """One row per unit, few new events: chDB hashes that statement's joins, DuckDB bounds
    its buffer pool for it (SPEC §9); each setting comes back afterwards, and one the
    warehouse's settings chose (another join algorithm, a smaller memory limit) is kept."""
    from sqlalchemy import text

    from experiments.services.pipeline import dialects
    from experiments.services.pipeline.dialects import kept_values_settings
    from experiments.services.warehouses import engines
    from experiments.services.warehouses.engines import ENGINE_SETTINGS, _make_engine

    assert ENGINE_SETTINGS["chdb"]["join_algorithm"] == dialects.CHDB_JOIN
    assert engines.DUCKDB_DEFAULT_MEMORY == dialects.DUCKDB_DEFAULT_MEMORY

    def around(url: str, current: str, settings: tuple[tuple[str, str], ...], *,
               when: bool) -> list[str]:
        engine = _make_engine(WarehouseConfig("w", url, settings=settings))
        with engine.connect() as connection:
            before = connection.scalar(text(current))
            with kept_values_settings(connection, when=when):
                inside = connection.scalar(text(current))
            after = connection.scalar(text(current))
        engine.dispose()
        return [before, inside, after]

    join = "SELECT getSetting('join_algorithm')"
    assert around("chdb:///:memory:", join, (), when=True) == [
        "partial_merge", "hash", "partial_merge"]
    assert around("chdb:///:memory:", join, (), when=False) == ["partial_merge"] * 3
    chosen = (("join_algorithm", "grace_hash"),)
    assert around("chdb:///:memory:", join, chosen, when=True) == ["grace_hash"] * 3

    memory = "SELECT current_setting('memory_limit')"
    duckdb_url = f"duckdb:///{tmp_path}/w.duckdb"
    before, inside, after = around(duckdb_url, memory, (), when=True)
    assert dialects.KEPT_DUCKDB_MEMORY == "200MB" and inside == "190.7 MiB"
    assert after == before and before.endswith("GiB")  # DuckDB's default: 80 % of RAM
    assert around(duckdb_url, memory, (), when=False) == [before] * 3
    for chosen in ((("memory_limit", "1GB"),), (("memory_limit", "100GB"),)):
        assert len(set(around(duckdb_url, memory, chosen, when=True))) == 1
    in_url = around(f"{duckdb_url}?memory_limit=1GB", memory, (), when=True)
    assert in_url == ["953.6 MiB"] * 3
