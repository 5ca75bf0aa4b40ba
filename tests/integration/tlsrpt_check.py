"""A strict checker of TLS-RPT aggregate reports (RFC 8460 section 4).

check(report) returns the list of what is wrong with a report (empty when
it conforms); assert_valid() raises ReportError with that list. report is
the JSON text (str or bytes) or the already decoded object.

What is checked (RFC 8460 4.1-4.4, with erratum 6241: mx-host is an array):
- JSON itself: one object, no duplicate member names, counts are integers
  (not floats, not booleans).
- Top level: exactly organization-name (non-empty string), date-range
  {start-datetime, end-datetime} (RFC 3339 5.6 date-time, start not after
  end), contact-info (an addr-spec, 4.4), report-id (non-empty string),
  policies (a non-empty array).
- Each policies[] entry: policy {policy-type "sts" | "tlsa" |
  "no-policy-found", policy-string (array of strings; required for sts and
  tlsa), policy-domain (an A-label domain), mx-host (array of MX patterns;
  required for sts)}, summary {total-successful-session-count,
  total-failure-session-count: integers >= 0}, failure-details (array,
  optional).
- Each failure-details[] entry: result-type from the 4.3 vocabulary (and
  the IANA registry it created), failed-session-count (integer >= 0),
  optional sending-mta-ip and receiving-ip (IPv4 dotted-decimal as 4.4's
  ABNF, or IPv6), receiving-mx-hostname (a host name), receiving-mx-helo,
  additional-information, failure-reason-code (strings).
- Members not named by the RFC are errors (allow_unknown=True accepts
  them), so a typo such as "failure-session-count" is caught.

convoy=True adds what Convoy promises beyond the RFC: date-times in UTC
with an upper-case Z and no fractions, a range inside one UTC day starting
at 00:00:00Z, every failure counted in exactly one failure-details row
(their sum equals total-failure-session-count), policy-string and mx-host
always present, and no empty optional strings.
"""

import datetime
import ipaddress
import json
import re

RESULT_TYPES = frozenset([
    # 4.3.1 negotiation failures
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
    "certificate-not-trusted", "validation-failure",
    # 4.3.2.1 DANE
    "tlsa-invalid", "dnssec-invalid", "dane-required",
    # 4.3.2.2 MTA-STS
    "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid",
])
POLICY_TYPES = frozenset(["tlsa", "sts", "no-policy-found"])

TOP = {"organization-name", "date-range", "contact-info", "report-id", "policies"}
RANGE = {"start-datetime", "end-datetime"}
ENTRY_REQUIRED = {"policy", "summary"}
ENTRY = ENTRY_REQUIRED | {"failure-details"}
POLICY_REQUIRED = {"policy-type", "policy-domain"}
POLICY = POLICY_REQUIRED | {"policy-string", "mx-host"}
SUMMARY = {"total-successful-session-count", "total-failure-session-count"}
DETAIL_REQUIRED = {"result-type", "failed-session-count"}
DETAIL_STRINGS = {"receiving-mx-helo", "additional-information", "failure-reason-code"}
DETAIL = DETAIL_REQUIRED | DETAIL_STRINGS | {"sending-mta-ip", "receiving-mx-hostname",
                                             "receiving-ip"}

# RFC 3339 5.6: full-date "T" full-time; "T" and "Z" may be lower case (5.6 NOTE).
DATETIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?"
                      r"([Zz]|[+-](\d{2}):(\d{2}))$")
# RFC 8460 4.4: IPv4address = dec-octet "." dec-octet "." dec-octet "." dec-octet
DEC_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
IPV4 = re.compile(r"^%s\.%s\.%s\.%s$" % ((DEC_OCTET,) * 4))
LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
ADDR_SPEC = re.compile(r"^[^\s@\"<>()\[\],;:\\]+@[A-Za-z0-9.-]+$")


class ReportError(AssertionError):
    def __init__(self, errors):
        AssertionError.__init__(self, "invalid TLS-RPT report:\n  " + "\n  ".join(errors))
        self.errors = errors


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    dups = sorted(set(k for k in keys if keys.count(k) > 1))
    if dups:
        raise ValueError("duplicate member %s" % ", ".join(dups))
    return dict(pairs)


def _reject_constant(name):
    raise ValueError("non-standard JSON constant %s" % name)


def parse_datetime(s):
    """An RFC 3339 date-time as an aware datetime, or None."""
    m = DATETIME.match(s) if isinstance(s, str) else None
    if not m:
        return None
    y, mo, d, h, mi, sec = (int(m.group(i)) for i in range(1, 7))
    if sec == 60:  # a leap second: valid in RFC 3339, not in datetime
        sec = 59
    try:
        if m.group(8) in ("Z", "z"):
            tz = datetime.timezone.utc
        else:
            oh, om = int(m.group(9)), int(m.group(10))
            if oh > 23 or om > 59:
                return None
            off = datetime.timedelta(hours=oh, minutes=om)
            tz = datetime.timezone(off if m.group(8)[0] == "+" else -off)
        return datetime.datetime(y, mo, d, h, mi, sec, tzinfo=tz)
    except ValueError:
        return None


def is_domain(s, pattern=False):
    if not isinstance(s, str) or not s or len(s) > 253 or not s.isascii():
        return False
    labels = s.split(".")
    if pattern and labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            return False
    return all(LABEL.match(l) for l in labels)


def is_ip(s):
    if not isinstance(s, str):
        return False
    if IPV4.match(s):
        return True
    if ":" not in s:
        return False
    try:
        ipaddress.IPv6Address(s)
        return True
    except ValueError:
        return False


def _is_count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _members(errors, where, obj, allowed, required, allow_unknown):
    if not isinstance(obj, dict):
        errors.append("%s: not an object" % where)
        return False
    for k in sorted(required - obj.keys()):
        errors.append("%s: %s missing" % (where, k))
    if not allow_unknown:
        for k in sorted(obj.keys() - allowed):
            errors.append("%s: unknown member %r" % (where, k))
    return True


def _string_array(errors, where, v, check=None, what="string"):
    if not isinstance(v, list):
        errors.append("%s: not an array" % where)
        return
    for i, s in enumerate(v):
        if not isinstance(s, str):
            errors.append("%s[%d]: not a string" % (where, i))
        elif check and not check(s):
            errors.append("%s[%d]: %r is not a valid %s" % (where, i, s, what))


def check(report, allow_unknown=False, convoy=False):
    """Everything wrong with a report, as a list of messages."""
    errors = []
    if isinstance(report, (str, bytes, bytearray)):
        try:
            report = json.loads(report, object_pairs_hook=_no_duplicates,
                                parse_constant=_reject_constant)
        except ValueError as e:
            return ["not JSON: %s" % e]
    if not _members(errors, "report", report, TOP, TOP, allow_unknown):
        return errors

    v = report.get("organization-name")
    if "organization-name" in report and (not isinstance(v, str) or not v.strip()):
        errors.append("organization-name: not a non-empty string")
    v = report.get("contact-info")
    if "contact-info" in report and (not isinstance(v, str) or not ADDR_SPEC.match(v)):
        errors.append("contact-info: %r is not an email address" % (v,))
    v = report.get("report-id")
    if "report-id" in report and (not isinstance(v, str) or not v.strip()):
        errors.append("report-id: not a non-empty string")

    dr = report.get("date-range")
    if dr is not None and _members(errors, "date-range", dr, RANGE, RANGE, allow_unknown):
        times = {}
        for k in sorted(RANGE & dr.keys()):
            t = parse_datetime(dr[k])
            if t is None:
                errors.append("date-range.%s: %r is not an RFC 3339 date-time" % (k, dr[k]))
                continue
            times[k] = t
            if convoy and not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", dr[k]):
                errors.append("date-range.%s: %r is not UTC with Z and no fraction" % (k, dr[k]))
        if len(times) == 2:
            start, end = times["start-datetime"], times["end-datetime"]
            if start > end:
                errors.append("date-range: start-datetime after end-datetime")
            if convoy:
                s = start.astimezone(datetime.timezone.utc)
                if (s.hour, s.minute, s.second) != (0, 0, 0):
                    errors.append("date-range: does not start at 00:00:00Z")
                if end - start > datetime.timedelta(seconds=86399):
                    errors.append("date-range: longer than one UTC day")

    policies = report.get("policies")
    if policies is None:
        return errors
    if not isinstance(policies, list):
        errors.append("policies: not an array")
        return errors
    if not policies:
        errors.append("policies: empty (a report with nothing to say is not sent)")
    for i, entry in enumerate(policies):
        where = "policies[%d]" % i
        if not _members(errors, where, entry, ENTRY, ENTRY_REQUIRED, allow_unknown):
            continue
        ptype = None
        pol = entry.get("policy")
        if pol is not None and _members(errors, where + ".policy", pol, POLICY, POLICY_REQUIRED,
                                        allow_unknown):
            ptype = pol.get("policy-type")
            if "policy-type" in pol and ptype not in POLICY_TYPES:
                errors.append("%s.policy.policy-type: %r is not tlsa, sts or no-policy-found"
                              % (where, ptype))
            if "policy-domain" in pol and not is_domain(pol["policy-domain"]):
                errors.append("%s.policy.policy-domain: %r is not an A-label domain"
                              % (where, pol["policy-domain"]))
            need_strings = ptype in ("sts", "tlsa") or convoy
            if "policy-string" in pol:
                _string_array(errors, where + ".policy.policy-string", pol["policy-string"])
                if ptype == "sts" and isinstance(pol["policy-string"], list):
                    if "version: STSv1" not in pol["policy-string"]:
                        errors.append("%s.policy.policy-string: no \"version: STSv1\"" % where)
            elif need_strings:
                errors.append("%s.policy: policy-string missing" % where)
            if "mx-host" in pol:
                _string_array(errors, where + ".policy.mx-host", pol["mx-host"],
                              lambda s: is_domain(s, pattern=True), "MX host pattern")
            elif ptype == "sts" or convoy:
                errors.append("%s.policy: mx-host missing" % where)

        total_fail = None
        summ = entry.get("summary")
        if summ is not None and _members(errors, where + ".summary", summ, SUMMARY, SUMMARY,
                                         allow_unknown):
            for k in sorted(SUMMARY & summ.keys()):
                if not _is_count(summ[k]):
                    errors.append("%s.summary.%s: %r is not an integer >= 0" % (where, k, summ[k]))
            if _is_count(summ.get("total-failure-session-count")):
                total_fail = summ["total-failure-session-count"]

        details = entry.get("failure-details", [])
        if not isinstance(details, list):
            errors.append("%s.failure-details: not an array" % where)
            continue
        counted = 0
        for j, d in enumerate(details):
            dw = "%s.failure-details[%d]" % (where, j)
            if not _members(errors, dw, d, DETAIL, DETAIL_REQUIRED, allow_unknown):
                continue
            if "result-type" in d and d["result-type"] not in RESULT_TYPES:
                errors.append("%s.result-type: %r is not an RFC 8460 result type"
                              % (dw, d["result-type"]))
            if "failed-session-count" in d:
                if _is_count(d["failed-session-count"]):
                    counted += d["failed-session-count"]
                else:
                    errors.append("%s.failed-session-count: %r is not an integer >= 0"
                                  % (dw, d["failed-session-count"]))
            for k in ("sending-mta-ip", "receiving-ip"):
                if k in d and not is_ip(d[k]):
                    errors.append("%s.%s: %r is not an IP address" % (dw, k, d[k]))
            if "receiving-mx-hostname" in d and not is_domain(d["receiving-mx-hostname"]):
                errors.append("%s.receiving-mx-hostname: %r is not a host name"
                              % (dw, d["receiving-mx-hostname"]))
            for k in sorted(DETAIL_STRINGS & d.keys()):
                if not isinstance(d[k], str):
                    errors.append("%s.%s: not a string" % (dw, k))
                elif convoy and not d[k]:
                    errors.append("%s.%s: empty" % (dw, k))
        if convoy and total_fail is not None and counted != total_fail:
            errors.append("%s: failure-details count %d sessions, summary says %d"
                          % (where, counted, total_fail))
    return errors


def assert_valid(report, **kw):
    errors = check(report, **kw)
    if errors:
        raise ReportError(errors)
    return report if isinstance(report, dict) else json.loads(report)
