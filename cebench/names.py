"""The one check of every string that becomes part of a file name: an init label (--init-label, a ce.pt's
meta.init_label), a profile, a split, a class, an image id. Such a string is a name, never a path."""

import re

from cebench.errors import CebenchError

# A name that becomes part of a file name (an init label, a profile, a split, a class, an image id): letters, digits
# and . _ - after a letter or digit. Never a path: no separator, no leading dot ('..', hidden files), no spaces.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(value, what):
    """`value` as a name for file names, or one line naming `what` (the flag or file it came from)."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise CebenchError(f"{what}: {value!r} is not a name (a name is 1-100 letters, digits and . _ -, starting "
                           "with a letter or digit; never a path)")
    return value
