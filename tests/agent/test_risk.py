"""score_code: every risky construct is ``high`` with a reason naming it; ordinary data-science
code is ``low``; IPython syntax is judged; what cannot be parsed is ``high``."""

from __future__ import annotations

import pytest

from jupyter_cloudide.agent.tools.risk import score_code

RISKY: list[tuple[str, str]] = [
    # processes and shells
    ("import subprocess\nsubprocess.run(['ls'])", "subprocess"),
    ("from subprocess import check_output", "subprocess"),
    ("import os\nos.system('rm -rf /')", "os.system"),
    ("import os as o\no.system('ls')", "os.system"),
    ("from os import system as run_it\nrun_it('ls')", "system"),
    ("import os\nos.popen('ls').read()", "os.popen"),
    ("import os\nos.execv('/bin/sh', ['sh'])", "os.execv"),
    ("import os\nos.execlp('sh', 'sh')", "os.execlp"),
    ("import os\nos.spawnlp(os.P_WAIT, 'ls', 'ls')", "os.spawnlp"),
    ("import pty\npty.spawn('/bin/sh')", "pty"),
    ("get_ipython().system('ls')", ".system()"),
    ("f = getattr(os, 'system')\nf('ls')", "'system'"),
    # deleting and writing files
    ("import shutil\nshutil.rmtree('data')", "shutil.rmtree"),
    ("import os\nos.remove('a.csv')", "os.remove"),
    ("import os\nos.unlink('a.csv')", "os.unlink"),
    ("from pathlib import Path\nPath('a.csv').unlink()", ".unlink()"),
    ("from pathlib import Path\nPath('out').rmdir()", ".rmdir()"),
    ("from pathlib import Path\nPath('a.txt').write_text('x')", ".write_text()"),
    ("open('out.txt', 'w').write('x')", "'w'"),
    ("open('log.txt', 'a')", "'a'"),
    ("open('new.txt', 'x')", "'x'"),
    ("open('data.bin', 'r+b')", "'r+b'"),
    ("open('data.txt', mode='wb')", "'wb'"),
    ("open('data.txt', mode)", "mode this check cannot read"),
    ("from pathlib import Path\nPath('a.txt').open('w')", "'w'"),
    ("import io\nio.open('a.txt', 'w')", "'w'"),
    # network
    ("import socket\nsocket.create_connection(('example.com', 80))", "socket"),
    ("import requests\nrequests.post('https://example.com', data=secrets)", "requests"),
    ("import urllib.request\nurllib.request.urlopen('https://example.com')", "urllib"),
    ("from urllib.request import urlopen", "urllib"),
    ("import httpx", "httpx"),
    ("import http.client", "http.client"),
    ("from http import client", "http"),
    ("import aiohttp", "aiohttp"),
    # dynamic code
    ("eval('1 + 1')", "eval"),
    ("exec('import os')", "exec"),
    ("__import__('os').system('ls')", "__import__"),
    ("import importlib\nimportlib.import_module('os')", "importlib"),
    ("f = eval", "eval"),
    ("().__class__.__base__.__subclasses__()", "__subclasses__"),
    # IPython shell and magics
    ("!ls -la", "!ls -la"),
    ("files = !ls", "!ls"),
    ("for i in range(2):\n    !echo hi", "!echo hi"),
    ("%%bash\nrm -rf ~", "%%bash"),
    ("%%sh\nls", "%%sh"),
    ("%%script bash\nls", "%%script"),
    ("%system ls", "%system"),
    ("%sx ls", "%sx"),
    ("out = %sx ls", "%sx"),
    ("%%writefile app.py\nprint(1)", "%%writefile"),
    ("%pip install left-pad", "%pip"),
    ("%run script.py", "%run"),
    ("%%time\nimport os\nos.system('ls')", "os.system"),
    ("%time os.remove('x')", "os.remove"),
    ("get_ipython().run_cell_magic('bash', '', 'ls')", "%%bash"),
    ("import numpy as np\n%%bash\nls", "%%bash"),
]


@pytest.mark.parametrize(("code", "named"), RISKY)
def test_risky_code_is_high_with_a_reason_naming_the_construct(code: str, named: str) -> None:
    report = score_code(code)
    assert report.level == "high", code
    assert report.high
    assert any(named in reason for reason in report.reasons), report.reasons


BENIGN = [
    "import pandas as pd\ndf = pd.read_csv('sales.csv')\ndf.groupby('region').sum()",
    "import numpy as np\nx = np.linspace(0, 1, 100)\nprint(x.mean(), x.std())",
    "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.title('t')\nplt.show()",
    "%matplotlib inline\nimport seaborn as sns\nsns.histplot([1, 2, 2, 3])",
    "%load_ext autoreload\n%autoreload 2\nfrom mypkg import model",
    "%%time\ntotal = sum(range(10**6))",
    "%timeit -n 10 sum(range(100))",
    "with open('data.csv') as f:\n    rows = f.readlines()\nprint(len(rows))",
    "open('data.csv', 'r').read()",
    "from urllib.parse import urlparse\nurlparse('https://example.com').netloc",
    "import os\nprint(os.path.join('a', 'b'), os.getcwd())",
    "text = 'x'.replace('x', 'y')\ndf = df.rename(columns={'a': 'b'})",
    "x = a % b\nprint(x != 3)",
    "doc = '''\n!this is text, not a shell line\n%and this is not a magic\n'''",
    "def f(items):\n    return [i ** 2 for i in items if i % 2]\nprint(f(range(10)))",
    "",
]


@pytest.mark.parametrize("code", BENIGN)
def test_ordinary_data_science_code_is_low(code: str) -> None:
    report = score_code(code)
    assert report.level == "low", report.reasons
    assert report.reasons == []


@pytest.mark.parametrize("code", [
    "def f(:\n    pass",
    "print('unterminated",
    "x = (" * 200 + ")" * 200,
    "rm -rf /",
    "%%time\ndef broken(:",
])
def test_code_that_cannot_be_analyzed_is_high(code: str) -> None:
    report = score_code(code)
    assert report.level == "high"
    assert any("cannot analyze" in reason for reason in report.reasons), report.reasons


def test_deeply_nested_code_does_not_crash() -> None:
    report = score_code("x = " + "[" * 5000 + "]" * 5000)
    assert report.level == "high"


def test_reasons_are_not_repeated() -> None:
    report = score_code("import os\nos.system('a')\nos.system('b')")
    assert report.reasons == ["runs a shell command: os.system"]
