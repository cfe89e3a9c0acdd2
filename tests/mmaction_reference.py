"""Reference facts read off MMAction2 1.2.0 (see ../shared/data/mmaction2/README.md), shared by test_models.py
and test_checkpoints.py. The key files are copied into tests/data/ so the suite runs without ../shared."""
import ast
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"

# MMAction2 1.2.0 recognizers with 400 classes: our arch -> (key file in tests/data, family, parameter count)
KEY_FILES = {
    "tsn_r50": ("mmaction_keys_tsn_r50.txt", "tsn", 24_327_632),
    "slowonly_r50_4x16": ("mmaction_keys_slowonly_r50.txt", "3d", 32_454_096),
    "slowonly_r101_8x8": ("mmaction_keys_slowonly_r101.txt", "3d", 60_359_120),
    "ircsn_r152_32x2": ("mmaction_keys_ircsn_r152.txt", "3d", 29_703_568),
}


def read_key_file(path: Path) -> dict[str, tuple]:
    """MMAction2 key file: 'key<TAB>shape<TAB>dtype' lines -> {key: (shape, dtype)} in file order."""
    rows = {}
    for line in Path(path).read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, dtype = line.split("\t")
            rows[key] = (tuple(ast.literal_eval(shape)), dtype)
    return rows
