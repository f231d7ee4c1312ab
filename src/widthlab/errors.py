"""One-line errors shared by the command line's two halves (widthlab.cli, widthlab.lightning_cli): jsonargparse's
multi-line parse errors condensed to one line with a guess for a mistyped option. A module of its own so that
neither half imports the other for it."""
from __future__ import annotations

import difflib
import re

# jsonargparse's framing of a Union error (Optional[list[Intervention]]): the alternatives that were tried
_NOISE = ("Expected a path but", "Does not validate against any of", "Subtypes:", "Errors:",
          "Expected a <class 'NoneType'>", "Given value type:")
# how jsonargparse names an unknown key: on the command line, in a --config file, in a typed function's config
_UNKNOWN = [r"unrecognized arguments: (--[\w.\-+]+)", r"does not accept (?:option|nested key) '([\w.\-]+)'",
            r"Option '([\w.\-]+)' is not accepted"]


def one_line_parse_error(message: str, options: list[str], command: str = "") -> str:
    """jsonargparse's error (often several lines) as one line, with a guess for a mistyped option."""
    lines = [line.strip(" -") for line in message.splitlines()]
    text = " ".join(" ".join(line for line in lines if line and not line.startswith(_NOISE)).split())
    for pattern in _UNKNOWN:
        found = re.search(pattern, text)
        close = difflib.get_close_matches("--" + found.group(1).lstrip("-"), options, n=1, cutoff=0.75) if found else []
        if close:
            text += f"; did you mean {close[0]}?"
            break
    if len(text) > 400:
        text = text[:397] + "..."
    return f"{text} (the options: python -m train {command + ' ' if command else ''}--help)"
