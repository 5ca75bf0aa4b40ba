"""run_suite.py NAME - run one integration suite (test_NAME.py) for ctest.

Exit status: 0 when it passed, 1 when it failed, 77 (ctest's
SKIP_RETURN_CODE) when it passed only because cases were skipped for a
missing tool (world.needs()): such a suite did not run and must not read as
a pass. Under CI=true world.needs() fails those cases instead.
"""
import sys
import unittest

import world


def main():
    name = sys.argv[1]
    suite = unittest.defaultTestLoader.loadTestsFromName(name)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    if not result.wasSuccessful():
        return 1
    tool_skips = [t for t, why in result.skipped if why.startswith(world.TOOL_SKIP)]
    if tool_skips:
        print("%s: %d case(s) skipped for a missing tool: reporting SKIPPED" %
              (name, len(tool_skips)), file=sys.stderr)
        return 77
    return 0


if __name__ == "__main__":
    sys.exit(main())
