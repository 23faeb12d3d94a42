"""The local clusters, images and servers the demo, the tests and the benchmarks run on.

They run as root and use root's tools (chroot, debootstrap, runuser, umount, runc), which Debian keeps
in the sbin folders; a PATH without them (CI's, say) gets them added here, for this process and every
child it starts.
"""

import os as _os

_path = _os.environ.get("PATH", "").split(_os.pathsep)
_os.environ["PATH"] = _os.pathsep.join(
    [*_path, *(d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin") if d not in _path)]
)
