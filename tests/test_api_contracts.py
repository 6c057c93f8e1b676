"""fedsim.api holds the plugin contracts only: it loads no other part of fedsim but the
threat model, and the helper modules build on its types instead of redefining them."""

import subprocess
import sys

from fedsim import api
from fedsim.privacy import noise


def test_api_imports_only_the_threat_model() -> None:
    code = (
        "import sys, fedsim.api\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'fedsim')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == ["fedsim", "fedsim.api", "fedsim.threat"]


def test_helpers_share_the_contract_types() -> None:
    assert noise.Update is api.Update
    assert set(api.__all__) >= {"Attack", "Defence", "Observation", "Reconstruction", "Update"}
    assert not {"MatchingAttack", "clip_update", "recover_labels"} & set(api.__all__)
