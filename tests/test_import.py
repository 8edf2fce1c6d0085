"""`import kerntk` is quiet and never needs matplotlib or tensorflow-datasets."""

import subprocess
import sys

_BLOCK_AND_IMPORT = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('matplotlib', 'tensorflow_datasets'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import keras  # keras imports matplotlib when it can; it must cope without it, and so must we
import kerntk
print('ok', sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'tensorflow_datasets')))
"""


def test_import_works_without_matplotlib_and_tfds():
    out = subprocess.run([sys.executable, "-c", _BLOCK_AND_IMPORT], capture_output=True,
                         text=True, timeout=300, env={"TF_CPP_MIN_LOG_LEVEL": "3",
                                                      "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok []"


def test_import_prints_nothing_of_its_own():
    code = "import tensorflow, keras; import sys; sys.stdout.flush(); print('---'); import kerntk"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("---", 1)[1].strip() == ""
    # Whatever kerntk prints on stderr after TensorFlow is loaded would be ours.
    assert "kerntk" not in out.stderr
