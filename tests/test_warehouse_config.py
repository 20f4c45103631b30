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
