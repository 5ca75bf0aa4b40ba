/*
 * name.c - host-name syntax and the domain of an address: the one copy of
 * checks that conf, policy and dns each used to carry.
 *
 * RFC 1035 2.3.1 and RFC 5321 4.1.2: a Domain is dot-separated sub-domains,
 * each Let-dig [Ldh-str] (letters, digits, hyphens not at either end);
 * RFC 1035 2.3.4: labels of at most 63 octets, and 253 characters for the
 * name written without its root dot.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "base.h"

static bool is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

bool host_name_ok(const char *s, size_t n, unsigned flags)
{
    if ((flags & HOST_NAME_TRAILING_DOT) && n > 0 && s[n - 1] == '.')
        n--;
    if (n == 0 || n > 253)
        return false;
    bool dns = flags & HOST_NAME_DNS;
    bool underscore = dns || (flags & HOST_NAME_UNDERSCORE);
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (label == 0 || (!dns && s[i - 1] == '-'))
                return false;
            label = 0;
            continue;
        }
        if (dns) {
            /* Presentation escapes and whitespace would change what the
             * resolver sends; mail domains never need them. */
            if (c <= ' ' || c == 0x7f || c == '\\')
                return false;
        } else if (c == '-') {
            if (label == 0)
                return false;
        } else if (!is_alnum(c) && !(underscore && c == '_')) {
            return false;
        }
        if (++label > 63)
            return false;
    }
    return label > 0 && (dns || s[n - 1] != '-');
}

void addr_domain(const char *addr, char *out, size_t size)
{
    if (size == 0)
        return;
    out[0] = '\0';
    const char *at = addr ? strrchr(addr, '@') : NULL;
    if (!at)
        return;
    size_t k = 0;
    for (const char *p = at + 1; *p && k + 1 < size; p++) {
        char ch = *p;
        if (ch >= 'A' && ch <= 'Z')
            ch = (char)(ch - 'A' + 'a');
        out[k++] = ch;
    }
    /* One trailing dot names the same domain. */
    if (k > 0 && out[k - 1] == '.')
        k--;
    out[k] = '\0';
}

void sockaddr_text(const struct sockaddr *sa, char *out, size_t size)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        snprintf(out, size, "[%s]:%u", ip, ntohs(a->sin6_port));
    } else if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        snprintf(out, size, "%s:%u", ip, ntohs(a->sin_port));
    } else {
        snprintf(out, size, "?");
    }
}
