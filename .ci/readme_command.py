"""Print the command of the README code block marked ``<!-- ci: NAME -->``, so CI runs it exactly as written.

Usage: python3 .ci/readme_command.py NAME. Exits 2 when the marker or its one-line bash block is missing.
"""

import pathlib
import re
import sys

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def command(name: str) -> str:
    blocks = re.findall(rf"<!-- ci: {re.escape(name)} -->\s*```bash\n(.*?)\n```", README.read_text(), re.S)
    if len(blocks) != 1 or "\n" in blocks[0].strip():
        print(f"README.md needs exactly one one-line bash block after <!-- ci: {name} --> (found {len(blocks)})",
              file=sys.stderr)
        sys.exit(2)
    return blocks[0].strip()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python3 .ci/readme_command.py NAME", file=sys.stderr)
        sys.exit(2)
    print(command(sys.argv[1]))
