"""The version range check every media/*_internals.py module runs when it loads."""

import re

import pytest

from media import aioice_internals, aiortc_internals, pylibsrtp_internals
from media.library_versions import VersionRange, release, require_version


def test_release_reads_the_numeric_part() -> None:
    assert release("1.16.0") == (1, 16, 0)
    assert release("1.16") == (1, 16)
    assert release("0.13.1.post2") == (0, 13, 1)
    assert release("1.17.0rc1") == (1, 17, 0)
    assert release("1.0.0+local") == (1, 0, 0)
    assert release("dev") == ()


@pytest.mark.parametrize("found", ["1.16", "1.16.0", "1.16.9", "1.16.0rc1", "1.16.2.post1"])
def test_versions_in_range_load(found: str) -> None:
    require_version("aiortc", found, "1.16", "1.17", module="media.aiortc_internals")


@pytest.mark.parametrize("found", ["1.15.9", "1.17", "1.17.0", "1.17.0rc1", "2.0.0", "0.16.0", "", "unknown"])
def test_versions_out_of_range_refuse_to_load_and_say_why(found: str) -> None:
    with pytest.raises(ImportError) as refused:
        require_version("aiortc", found, "1.16", "1.17", module="media.aiortc_internals")
    message = str(refused.value)
    assert "media.aiortc_internals needs aiortc>=1.16,<1.17" in message
    assert f"found aiortc {found}." in message


@pytest.mark.parametrize("tested, inside, outside", [
    (aiortc_internals.TESTED, "1.16.7", ("1.15.0", "1.17.0", "2.0.0")),
    (aioice_internals.TESTED, "0.13.9", ("0.12.0", "0.14.0", "1.0.0")),
    (pylibsrtp_internals.TESTED, "1.0.9", ("0.12.0", "1.1.0", "2.0.0")),
], ids=["aiortc", "aioice", "pylibsrtp"])
def test_each_internals_module_checks_its_range(tested: VersionRange, inside: str, outside: tuple[str, ...]) -> None:
    tested.check_installed()
    tested.check(inside)
    for found in outside:
        with pytest.raises(ImportError, match=rf"needs {tested.distribution}>={re.escape(tested.at_least)},"
                                              rf"<{re.escape(tested.below)} .*found {tested.distribution} {found}\."):
            tested.check(found)
