"""The version range check every media/*_internals.py module runs when it loads."""

import pytest

from media.library_versions import release, require_version


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
