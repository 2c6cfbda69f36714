"""`tierline dev`'s Tansu settings: its own defaults, and the environment always wins."""

from __future__ import annotations

import itertools

from tierline.config import Settings
from tierline.devstack.dev import tansu_settings
from tierline.eventlog.kafka import TANSU_FETCH_MAX_WAIT_MS, TANSU_PARTITIONS

VARIABLES = {
    "TIERLINE_KAFKA_IDEMPOTENCE": "kafka_idempotence",
    "TIERLINE_CONSUMER_FETCH_MAX_WAIT_MS": "consumer_fetch_max_wait_ms",
    "TIERLINE_KAFKA_PARTITIONS": "kafka_partitions",
}


def test_by_default_dev_uses_one_partition_a_short_fetch_wait_and_no_idempotence() -> None:
    assert tansu_settings({}) == {
        "kafka_idempotence": "false",
        "consumer_fetch_max_wait_ms": TANSU_FETCH_MAX_WAIT_MS,
        "kafka_partitions": TANSU_PARTITIONS,
    }
    # Production's defaults stay as they are: dev changes them only for Tansu.
    assert Settings.model_fields["kafka_partitions"].default > TANSU_PARTITIONS


def test_every_variable_set_in_the_environment_is_left_to_it() -> None:
    for size in range(len(VARIABLES) + 1):
        for chosen in itertools.combinations(VARIABLES, size):
            update = tansu_settings({name: "7" for name in chosen} | {"UNRELATED": "x"})
            assert set(update) == {VARIABLES[n] for n in VARIABLES if n not in chosen}, chosen


def test_the_update_is_a_valid_settings_change() -> None:
    settings = Settings().model_copy(update=tansu_settings({}))
    assert settings.kafka_partitions == TANSU_PARTITIONS
    assert settings.consumer_fetch_max_wait_ms == TANSU_FETCH_MAX_WAIT_MS
