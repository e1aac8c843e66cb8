"""Print one of the README's two set-up commands (the fenced bash blocks of its "Set-up"
section), so that CI runs exactly what the README says: ``python .ci/readme_command.py 1``
(install and run the quickstart) or ``2`` (install and run the tests)."""

import re
import sys
from pathlib import Path

readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
section = re.search(r"^## Set-up.*?(?=^## )", readme, re.S | re.M)
if section is None:
    sys.exit("README.md: no '## Set-up' section")
blocks = re.findall(r"^```bash\n(.*?)^```", section.group(0), re.S | re.M)
if len(blocks) != 2:
    sys.exit(f"README.md: the Set-up section has {len(blocks)} bash blocks, expected 2")
print(blocks[int(sys.argv[1]) - 1].strip())
