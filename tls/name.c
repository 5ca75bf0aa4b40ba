/*
 * name.c - does a certificate DNS name match a reference host name?
 *
 * RFC 6125 6.4 as RFC 8461 4.2 uses it:
 *  - 6.4.1: compare ASCII case-insensitively; a trailing dot (absolute name)
 *    is ignored on either side.
 *  - 6.4.3: a wildcard is honoured only as the complete leftmost label
 *    ("*.example.com") and matches exactly one label; "f*.example.com",
 *    "*f.example.com" and "a.*.example.com" are not wildcards, and since a
 *    certificate name never legitimately contains '*' otherwise, they match
 *    nothing. "*.com" (fewer than two labels after the wildcard) is refused
 *    as well, as OpenSSL and browsers do.
 *
 * Invariants: only letters, digits, '-', '_' and '.' (plus the leading "*."
 * of a pattern) ever match; empty labels never match; NULL never matches.
 */
#include "tls.h"

#include <string.h>
#include <strings.h>

/* Length of name without one trailing dot, or 0 if the name is not a
 * well-formed sequence of non-empty labels of allowed characters.
 * allow_star: the name may begin with the label "*". */
static size_t checked_len(const char *name, bool allow_star)
{
    size_t len = strlen(name);
    if (len > 0 && name[len - 1] == '.')
        len--;
    if (len == 0)
        return 0;
    size_t label = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (ch == '.') {
            if (label == 0)
                return 0;
            label = 0;
            continue;
        }
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
        if (ch == '*' && allow_star && i == 0 && len > 1 && name[1] == '.')
            ok = true;
        if (!ok)
            return 0;
        label++;
    }
    return label == 0 ? 0 : len;
}

const char *tls_name_mismatch(const char *pattern, const char *host)
{
    if (pattern == NULL || host == NULL)
        return "no name";
    size_t hlen = checked_len(host, false);
    if (hlen == 0)
        return "the host is not a DNS name of letters, digits and hyphens (give an IDN as "
               "A-labels, xn--...)";
    size_t plen = checked_len(pattern, true);
    if (plen == 0) {
        if (strchr(pattern, '*') != NULL)
            return "a wildcard must be the whole leftmost label (RFC 6125 6.4.3)";
        return "not a DNS name of letters, digits and hyphens (an IDN must be in A-label form)";
    }

    if (pattern[0] != '*')
        return plen == hlen && strncasecmp(pattern, host, plen) == 0 ? NULL : "another name";

    /* RFC 6125 6.4.3: "*." + rest matches one non-empty label + "." + rest. */
    const char *rest = pattern + 2;
    size_t rlen = plen - 2;
    if (memchr(rest, '.', rlen) == NULL)
        return "a wildcard over a top-level domain matches nothing";
    const char *dot = memchr(host, '.', hlen);
    if (dot != NULL) {
        const char *hrest = dot + 1;
        size_t hrlen = hlen - (size_t)(hrest - host);
        if (hrlen == rlen && strncasecmp(rest, hrest, rlen) == 0)
            return NULL;
    }
    /* Say why, for an operator reading it. */
    if (hlen == rlen && strncasecmp(rest, host, rlen) == 0)
        return "a wildcard needs exactly one label in front of the rest (RFC 6125 6.4.3)";
    if (hlen > rlen + 1 && host[hlen - rlen - 1] == '.' &&
        strncasecmp(rest, host + hlen - rlen, rlen) == 0)
        return "a wildcard matches one label only, not several (RFC 6125 6.4.3, RFC 8461 4.1)";
    return "another name";
}

bool tls_name_matches(const char *pattern, const char *host)
{
    return tls_name_mismatch(pattern, host) == NULL;
}
