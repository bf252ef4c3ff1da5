"""The library leaves its host's process-wide settings alone (beyond the scope of its own calls)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: the point is what importing the package does,
# and this test process has imported it long ago.
HOST = textwrap.dedent("""
    import io, sys
    from PIL import ImageFile
    ImageFile.LOAD_TRUNCATED_IMAGES = True            # the host's own choice

    import loader, loader.convert.imagecheck, loader.convert.packing, loader.check.verify, loader.check.decodecheck
    import loader.load.imageloader
    from loader.convert.imagecheck import BadImage, check_bytes
    from loader.synthetic import photo_like_image
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True, "importing loader changed it"

    buf = io.BytesIO()
    photo_like_image(0, size=(64, 48)).save(buf, "JPEG", quality=90)
    good, truncated = buf.getvalue(), buf.getvalue()[:-300]

    try:
        check_bytes(truncated)
    except BadImage as e:
        assert e.reason.startswith("corrupt or truncated JPEG: image file is truncated"), e.reason
    else:
        sys.exit("a truncated JPEG passed check_bytes with the host's LOAD_TRUNCATED_IMAGES=True")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True, "not restored after a call that raised"

    assert check_bytes(good).data == good
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True, "not restored after a call that returned"

    # pack with one worker decodes in this process: the truncated file is still skipped.
    import pathlib, tempfile
    root = pathlib.Path(tempfile.mkdtemp())
    (root / "src" / "a").mkdir(parents=True)
    (root / "src" / "a" / "good.jpg").write_bytes(good)
    (root / "src" / "a" / "truncated.jpg").write_bytes(truncated)
    report = loader.pack(root / "src", root / "dst", workers=1, progress=False)
    assert report.num_records == 1, report
    assert [rel for rel, _ in report.skipped] == ["a/truncated.jpg"], report.skipped
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True, "not restored after pack"

    # The module's own switch sets it False inside the block only, even when the block raises.
    from loader.convert.imagecheck import strict_truncation
    try:
        with strict_truncation():
            assert ImageFile.LOAD_TRUNCATED_IMAGES is False
            raise KeyError("boom")
    except KeyError:
        pass
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    print("ok")
""")


def test_pil_load_truncated_images_is_the_hosts_and_truncated_files_still_fail():
    r = subprocess.run([sys.executable, "-c", HOST], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == "ok"
