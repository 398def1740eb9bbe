"""The nbval set-up of `make test`: what it masks, and what it still compares."""

import configparser
import re
from pathlib import Path

import nbval.plugin
from nbformat.v4 import new_output

SANITIZE = Path(__file__).with_name("sanitize.cfg")


def sanitize(text: str) -> str:
    config = configparser.ConfigParser(interpolation=None)
    config.read(SANITIZE)
    for section in config.sections():
        text = re.sub(config[section]["regex"], config[section]["replace"], text)
    return text


def test_memory_addresses_are_masked_but_image_sizes_are_not():
    assert sanitize("<Foo object at 0x7f3a2b1c9d00>") == "<Foo object at 0xADDRESS>"
    assert sanitize("a 640x480 image") == "a 640x480 image"


def test_durations_are_masked_but_other_numbers_are_not():
    assert sanitize("20 epochs in 0.146 s") == "20 epochs in DURATION"
    assert sanitize("took 12ms") == "took DURATION"
    assert sanitize("3 samples, loss 0.25") == "3 samples, loss 0.25"


def test_progress_bars_are_masked():
    assert sanitize("epoch 1: 45%|####5     | 9/20 [00:01<00:02, 7.1it/s]") == "epoch 1: PROGRESS"


def test_stderr_is_left_out_of_the_comparison_and_stdout_kept():
    outputs = [
        new_output("stream", name="stdout", text="loss 0.1\n"),
        new_output("stream", name="stderr", text="100%|##########| 5/5\n"),
        new_output("error", ename="ValueError", evalue="bad", traceback=[]),
    ]
    kept = nbval.plugin.coalesce_streams(outputs)
    assert [(o.output_type, o.get("name")) for o in kept] == [("stream", "stdout"), ("error", None)]
