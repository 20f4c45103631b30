"""``PARCOURS_WAREHOUSE_<NAME>_*`` settings (SPEC §15): names lower-cased, URL required."""

from __future__ import annotations

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
    """chDB runs in the Parcours process: its defaults bound a report's memory (SPEC §9)."""
    from sqlalchemy import text

    from experiments.services.warehouses.engines import _make_engine

    engine = _make_engine(WarehouseConfig("ch", "chdb:///:memory:"))
    with engine.connect() as connection:
        current = {name: connection.scalar(text(f"SELECT getSetting('{name}')"))
                   for name in ("join_algorithm", "max_bytes_before_external_group_by")}
    engine.dispose()
    assert current == {"join_algorithm": "partial_merge",
                       "max_bytes_before_external_group_by": 50000000}


def test_chdb_hashes_the_join_of_kept_per_unit_values_unless_its_settings_chose() -> None:
    """One row per unit on both sides: a hash join for that statement only (SPEC §9)."""
    from sqlalchemy import text

    from experiments.services.pipeline.dialects import CHDB_JOIN, hashed_unit_join
    from experiments.services.warehouses.engines import ENGINE_SETTINGS, _make_engine

    assert ENGINE_SETTINGS["chdb"]["join_algorithm"] == CHDB_JOIN

    def algorithms(settings: tuple[tuple[str, str], ...], *, when: bool) -> list[str]:
        engine = _make_engine(WarehouseConfig("ch", "chdb:///:memory:", settings=settings))
        current = "SELECT getSetting('join_algorithm')"
        with engine.connect() as connection:
            with hashed_unit_join(connection, when=when):
                inside = connection.scalar(text(current))
            after = connection.scalar(text(current))
        engine.dispose()
        return [inside, after]

    assert algorithms((), when=True) == ["hash", "partial_merge"]
    assert algorithms((), when=False) == ["partial_merge", "partial_merge"]
    chosen = (("join_algorithm", "grace_hash"),)
    assert algorithms(chosen, when=True) == ["grace_hash", "grace_hash"]
