/*
 * pausefile.c - the pause table of the delivery engine as a text file,
 * <queue_directory>/pauses, so pauses survive a restart or a crash of
 * convoyd. Pure functions: the format and its parser; deliver_admin.c does
 * the I/O (atomic replace: temporary file, fsync, rename, fsync of the
 * directory, on a worker thread).
 *
 * Format (one pause a line; '#' starts a comment line; blank lines are
 * ignored; LF or CRLF line ends):
 *
 *     convoy-pauses 1
 *     # DOMAIN SINCE UNTIL REASON
 *     * 1764540000000 0 maintenance window
 *     example.com 1764540000000 1764547200000 their MX is being moved
 *
 * The first line that is not a comment names the format and its version.
 * DOMAIN is a lower-case domain, or "*" for all delivery; SINCE and UNTIL
 * are Unix times in milliseconds (UNTIL 0: until resumed); REASON is the
 * rest of the line, as the operator gave it (control characters were made
 * spaces when the pause was set).
 *
 * The parser never fails as a whole on a bad line: each problem is
 * reported with its line number and the line is skipped, so a damaged file
 * costs at most the pauses on its damaged lines. A file of another version
 * is ignored entirely (reported once).
 *
 * Invariants: bounded output (at most max records, each field within its
 * array), every string NUL-terminated, no allocation in the parser.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "deliver_int.h"

#define PAUSE_LINE_MAX 4096

bool pause_domain_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    /* "#..." would read back as a comment. */
    if (n == 0 || n >= PAUSE_DOMAIN_MAX || strcmp(s, "*") == 0 || s[0] == '#')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == 0x7f)
            return false;
    }
    return true;
}

void pause_reason_clean(const char *in, char *out, size_t size)
{
    if (size == 0)
        return;
    size_t k = 0;
    const char *p = in ? in : "";
    for (; *p && k + 1 < size; p++) {
        unsigned char c = (unsigned char)*p;
        out[k++] = c < ' ' || c == 0x7f ? ' ' : (char)c;
    }
    /* Cut short inside a UTF-8 sequence: drop its first bytes too, so the
     * reason stays valid UTF-8 for JSON. */
    if (((unsigned char)*p & 0xC0) == 0x80) {
        while (k > 0 && ((unsigned char)out[k - 1] & 0xC0) == 0x80)
            k--;
        if (k > 0 && ((unsigned char)out[k - 1] & 0xC0) == 0xC0)
            k--;
    }
    out[k] = '\0';
}

int pause_file_format(const struct pause_rec *r, size_t n, struct buf *out)
{
    int rc = buf_append_str(out, PAUSE_FILE_MAGIC
                            "\n"
                            "# Delivery pauses of convoyd, rewritten by convoyctl pause and "
                            "resume.\n"
                            "# DOMAIN (* = all delivery) SINCE UNTIL (Unix ms, 0 = until "
                            "resumed) REASON\n");
    for (size_t i = 0; i < n && rc == 0; i++) {
        char reason[PAUSE_REASON_MAX];
        pause_reason_clean(r[i].reason, reason, sizeof(reason));
        rc = buf_printf(out, "%s %lld %lld %s\n", r[i].domain[0] ? r[i].domain : "*",
                        (long long)r[i].since_ms, (long long)r[i].until_ms, reason);
    }
    return rc;
}

/* A decimal number of at most 18 digits (no sign): 0, or -1 if it is not. */
static int parse_ms(const char *s, size_t n, int64_t *out)
{
    if (n == 0 || n > 18)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

/* The next field of a line, separated by one or more spaces. */
static bool next_field(const char **p, const char *end, const char **f, size_t *n)
{
    while (*p < end && **p == ' ')
        (*p)++;
    *f = *p;
    while (*p < end && **p != ' ')
        (*p)++;
    *n = (size_t)(*p - *f);
    return *n > 0;
}

static void problem(pause_problem_cb cb, void *arg, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void problem(pause_problem_cb cb, void *arg, unsigned line, const char *fmt, ...)
{
    if (!cb)
        return;
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    cb(arg, line, why);
}

/* One pause line into *r; false with a problem reported. */
static bool parse_line(const char *s, size_t len, unsigned lineno, struct pause_rec *r,
                       pause_problem_cb cb, void *arg)
{
    const char *p = s, *end = s + len, *f;
    size_t n;
    memset(r, 0, sizeof(*r));
    if (!next_field(&p, end, &f, &n)) {
        problem(cb, arg, lineno, "no domain");
        return false;
    }
    if (!(n == 1 && f[0] == '*')) {
        if (n >= sizeof(r->domain)) {
            problem(cb, arg, lineno, "domain too long");
            return false;
        }
        memcpy(r->domain, f, n);
        r->domain[n] = '\0';
        if (!pause_domain_ok(r->domain)) {
            problem(cb, arg, lineno, "bad domain \"%.100s\"", r->domain);
            return false;
        }
        for (char *c = r->domain; *c; c++)
            if (*c >= 'A' && *c <= 'Z')
                *c = (char)(*c - 'A' + 'a');
    }
    if (!next_field(&p, end, &f, &n) || parse_ms(f, n, &r->since_ms) != 0 || r->since_ms == 0) {
        problem(cb, arg, lineno, "bad start time (milliseconds since 1970 expected)");
        return false;
    }
    if (!next_field(&p, end, &f, &n) || parse_ms(f, n, &r->until_ms) != 0) {
        problem(cb, arg, lineno, "bad end time (milliseconds since 1970, or 0, expected)");
        return false;
    }
    if (r->until_ms != 0 && r->until_ms < r->since_ms) {
        problem(cb, arg, lineno, "the pause ends before it starts");
        return false;
    }
    /* The reason: the rest of the line after one space. */
    if (p < end)
        p++;
    size_t rl = (size_t)(end - p);
    if (rl >= sizeof(r->reason))
        rl = sizeof(r->reason) - 1;
    memcpy(r->reason, p, rl);
    r->reason[rl] = '\0';
    return true;
}

size_t pause_file_parse(const char *text, size_t len, struct pause_rec *out, size_t max,
                        pause_problem_cb cb, void *arg)
{
    size_t n = 0;
    unsigned lineno = 0;
    bool have_magic = false;
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *next = nl ? nl + 1 : end;
        lineno++;
        size_t ll = (size_t)(le - p);
        if (ll > 0 && p[ll - 1] == '\r')
            ll--;
        const char *line = p;
        p = next;
        if (ll > PAUSE_LINE_MAX) {
            problem(cb, arg, lineno, "line too long");
            if (!have_magic)
                return 0;
            continue;
        }
        bool bad_byte = false;
        for (size_t i = 0; i < ll; i++) {
            unsigned char c = (unsigned char)line[i];
            if (c < ' ' || c == 0x7f)
                bad_byte = true;
        }
        if (bad_byte) {
            problem(cb, arg, lineno, "control character in the line");
            if (!have_magic)
                return 0;
            continue;
        }
        if (ll == 0 || line[0] == '#')
            continue;
        if (!have_magic) {
            if (ll != strlen(PAUSE_FILE_MAGIC) || memcmp(line, PAUSE_FILE_MAGIC, ll) != 0) {
                problem(cb, arg, lineno,
                        "not a pause file of this version (\"" PAUSE_FILE_MAGIC
                        "\" expected); every pause in it is ignored");
                return 0;
            }
            have_magic = true;
            continue;
        }
        struct pause_rec r;
        if (!parse_line(line, ll, lineno, &r, cb, arg))
            continue;
        bool dup = false;
        for (size_t i = 0; i < n && !dup; i++)
            dup = strcasecmp(out[i].domain, r.domain) == 0;
        if (dup) {
            problem(cb, arg, lineno, "second pause of %s ignored",
                    r.domain[0] ? r.domain : "all delivery");
            continue;
        }
        if (n == max) {
            problem(cb, arg, lineno, "more than %zu pauses: the rest are ignored", max);
            break;
        }
        out[n++] = r;
    }
    if (!have_magic && lineno > 0)
        problem(cb, arg, lineno, "no \"" PAUSE_FILE_MAGIC "\" line: no pauses read");
    return n;
}
