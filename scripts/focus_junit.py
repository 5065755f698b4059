"""Reads the focus-validator's JUnit XML and fails (exit 1) on any failed or erroring rule other than the known
false positives given as a comma-separated second argument. The validator exits 0 even when rules fail, so this
is the gate. Prints one summary line and each unexpected failure with its message."""
import sys
import xml.etree.ElementTree as ET


def main(path, allowed):
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
    tests = failed = skipped = 0
    unexpected, known = [], []
    for suite in suites:
        for case in suite.iter("testcase"):
            tests += 1
            if case.find("skipped") is not None:
                skipped += 1
            for bad in list(case.findall("failure")) + list(case.findall("error")):
                failed += 1
                name = bad.get("name") or case.get("name") or suite.get("name") or "?"
                rule = next((a for a in allowed if a in (name, case.get("name"), suite.get("name"))), None)
                (known if rule else unexpected).append((name, bad.get("message") or (bad.text or "").strip()))
    print(f"focus-validator: {tests} rules, {failed} failed ({len(known)} known false positive(s)), {skipped} skipped")
    for name, msg in unexpected:
        print(f"  FAILED {name}: {msg[:400]}")
    if tests == 0:
        print("  no rule ran: the validator output is empty")
        return 1
    return 1 if unexpected else 0


if __name__ == "__main__":
    allowed = [a for a in (sys.argv[2] if len(sys.argv) > 2 else "").split(",") if a]
    sys.exit(main(sys.argv[1], allowed))
