/*
 * dns.h - the dns module's contract: DNS lookups for delivery (MX, A, AAAA,
 * TXT and any other record type) with c-ares 1.18 driven by a libuv loop,
 * a small TTL-honouring cache, and the classification of every answer.
 *
 * Standards:
 *  - RFC 1035 4.1 (message format, name compression), RFC 2181 (TTLs are
 *    unsigned 31-bit; 10.3: an MX target must not be an alias).
 *  - RFC 5321 5.1: MX sorted by preference, equal preferences in random
 *    order; no MX records means an implicit MX of the domain itself with
 *    preference 0; NXDOMAIN is an error; a temporary error means retry.
 *  - RFC 7505: a single MX whose exchange is the root "." is a null MX: the
 *    domain takes no mail (556 5.1.10).
 *  - RFC 2308 5: negative answers are cached for min(SOA TTL, SOA MINIMUM),
 *    and not at all when the answer carries no SOA.
 *  - RFC 7208 3.3 / RFC 8461 3.1: the character-strings of one TXT record
 *    are concatenated; different records stay separate.
 *  - DNSSEC status (RFC 4035 3.2.3, RFC 6840 5.7 and 5.8): with
 *    dns_options.dnssec the queries carry the AD bit (and EDNS0 with the DO
 *    bit, RFC 3225, as Postfix sends them), and an answer's AD bit is read.
 *    Convoy never validates itself: it trusts the AD bit of a validating
 *    resolver, and only when EVERY resolver it may ask is declared
 *    validating (dns_options.validating; loopback by default). With one
 *    undeclared resolver in the list nothing is ever secure: otherwise an
 *    attacker who drops packets to the validating resolver would pick
 *    which server answers, and with it the verdict.
 *  - RFC 6698 2.1, RFC 7672 2.2: TLSA records (type 52) at _PORT._tcp.HOST
 *    are decoded (usage, selector, matching type, data); dns_tlsa_classify()
 *    says what a TLSA answer means for DANE.
 *
 * Threads: a struct dns belongs to one loop and is used on that loop's
 * thread only. Nothing here blocks and no thread is created.
 *
 * Callbacks: a lookup's callback is NEVER called before the call that
 * started it returns, not even for a cache hit or an invalid name; results
 * are delivered from the loop (a uv_idle_t handle drains them). A callback
 * is called exactly once unless the lookup is cancelled with dns_cancel()
 * or the resolver is freed with dns_free(); in those two cases it is never
 * called. If a call that starts a lookup returns an error, its callback is
 * never called. A callback may start new lookups, cancel others and call
 * dns_free().
 *
 * Ownership: a result passed to a callback, and everything it points to,
 * belongs to the module and is valid only during the callback; copy what
 * you keep. A struct dns_query handle is valid until its callback returns
 * or until dns_cancel() on it.
 */
#ifndef CONVOY_DNS_H
#define CONVOY_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Record types used by name (others may be passed as numbers). */
enum {
    DNS_T_A = 1,
    DNS_T_CNAME = 5,
    DNS_T_SOA = 6,
    DNS_T_MX = 15,
    DNS_T_TXT = 16,
    DNS_T_AAAA = 28,
    DNS_T_TLSA = 52,
};

/* Bounds on what one answer may give us; more records are ignored. */
#define DNS_MAX_RECORDS 64
/* A DNS name in presentation form: 253 characters, 4 times that when every
 * octet needs a \DDD escape, plus the NUL. */
#define DNS_NAME_MAX 1014
/* The largest answer kept in the cache; larger answers are used, not kept. */
#define DNS_CACHE_MAX_ANSWER 16384

/*
 * What an answer means for delivery. Callers never have to look at DNS
 * rcodes; dns_status_permanent() says whether to bounce or to retry.
 */
enum dns_status {
    DNS_OK = 0,      /* records of the type asked for were found */
    DNS_IMPLICIT_MX, /* MX lookup: no MX records; the domain itself is the
                        mail host, preference 0 (RFC 5321 5.1) */
    DNS_NULL_MX,     /* MX lookup: "MX 0 ." - the domain accepts no mail
                        (RFC 7505): permanent, 556 5.1.10 */
    DNS_NXDOMAIN,    /* the name does not exist: permanent */
    DNS_NODATA,      /* the name exists but has no usable record of the type;
                        for a full MX resolution: no MX host has an address
                        (RFC 5321 5.1 "MUST be reported as an error") */
    DNS_TEMPFAIL,    /* SERVFAIL, REFUSED, timeout, unreachable server, a
                        malformed or truncated answer: retry later */
    DNS_INVALID,     /* the name cannot be looked up (syntax, length), or
                        an MX target is an IP address literal: permanent */
};

/* "ok", "implicit-mx", "null-mx", "nxdomain", "nodata", "tempfail",
 * "invalid". Never NULL. */
const char *dns_status_name(enum dns_status s);
/* Is this outcome final for delivery (bounce rather than retry)? false for
 * DNS_OK and DNS_IMPLICIT_MX (nothing failed) and for DNS_TEMPFAIL. */
bool dns_status_permanent(enum dns_status s);

/* An address of a host. */
struct dns_addr {
    int family;        /* AF_INET or AF_INET6 */
    uint8_t bytes[16]; /* 4 or 16 bytes, network order */
};
/* Format an address as text ("127.0.0.1", "::1") into out. */
void dns_addr_format(const struct dns_addr *a, char *out, size_t size);

struct dns_mx {
    uint16_t pref;
    char *host; /* presentation form, no trailing dot; "." for the root */
};

/* One TXT record: its character-strings concatenated. text is NUL-terminated
 * for convenience but may contain NUL bytes itself: use len. */
struct dns_txt {
    char *text;
    size_t len;
};

/* One TLSA record (RFC 6698 2.1). data points into the result's raw copy
 * of the answer. A record shorter than the three fixed octets is kept with
 * usage, selector and mtype 255 and len 0: unusable, never a match. */
struct dns_tlsa {
    uint8_t usage;    /* 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE */
    uint8_t selector; /* 0 full certificate, 1 SubjectPublicKeyInfo */
    uint8_t mtype;    /* 0 exact, 1 SHA-256, 2 SHA-512 */
    const uint8_t *data;
    size_t len;
};

/* A record of the type asked for, as it stood in the answer (for types
 * without a decoder here, e.g. TLSA). rdata points into raw. */
struct dns_rr {
    uint16_t type;
    uint32_t ttl;
    const uint8_t *rdata;
    size_t rdlen;
};

/*
 * The result of one lookup. For DNS_OK the list matching the type asked for
 * is filled; rr always lists the records of that type (for any type).
 */
struct dns_result {
    enum dns_status status;
    int err;         /* 0, or the enum err behind a failure (ERR_TIMEOUT, ERR_DNS,
                        ERR_PROTO for a malformed answer, ERR_CLOSED) */
    const char *why; /* static text for the log: "SERVFAIL", "timeout", ... */
    char *name;      /* the name asked for (presentation form) */
    char *cname;     /* the canonical name when a CNAME chain was followed,
                        else NULL */
    uint16_t qtype;
    uint32_t ttl; /* seconds this answer stays valid (positive: the
                     smallest TTL used; negative: RFC 2308) */
    bool from_cache;
    /* DNSSEC. ad: the answer's AD bit as received (parser). dnssec: the
     * resolver asked with AD/DO and trusts its servers' AD bit, so secure
     * is meaningful and the lack of it means insecure. secure: dnssec and
     * ad - every RRset in the answer (the records asked for, the CNAME
     * chain to them, or the proof that there are none) was validated by
     * the resolver (RFC 4035 3.2.3). Never true without dnssec. */
    bool ad;
    bool dnssec;
    bool secure;
    bool servfail; /* DNS_TEMPFAIL because the servers answered SERVFAIL
                      (what a validating resolver says for bogus data) */

    size_t n_mx; /* MX: sorted by preference, equal ones shuffled; for
                    DNS_IMPLICIT_MX one entry: the name itself, preference 0 */
    struct dns_mx *mx;
    size_t n_addr; /* A, AAAA, and dns_addrs() */
    struct dns_addr *addr;
    size_t n_txt;
    struct dns_txt *txt;
    size_t n_tlsa; /* TLSA, in answer order */
    struct dns_tlsa *tlsa;
    size_t n_rr;
    struct dns_rr *rr;
    uint8_t *raw; /* the answer message as received (NULL on failure) */
    size_t raw_len;
};

/* ---- the answer parser (pure; no loop) ----------------------------------- */

/*
 * Parse and classify a DNS answer message to a query for qname (may be NULL:
 * then the question's name is taken) of type qtype. Fills *out (which must
 * be zeroed or cleared) and copies msg into out->raw. Every bound is
 * checked; a malformed message gives 0 with out->status DNS_TEMPFAIL and
 * out->err ERR_PROTO. Returns ERR_NOMEM only when allocation fails.
 * Free with dns_result_clear().
 */
int dns_parse_answer(const uint8_t *msg, size_t len, const char *qname, uint16_t qtype,
                     struct dns_result *out);
/* Free what a result owns and zero it. */
void dns_result_clear(struct dns_result *r);
/* Is name a syntactically valid DNS name to look up (1..253 characters
 * without a final dot, labels of 1..63, no spaces, controls or backslash)? */
bool dns_name_valid(const char *name);

/* ---- the resolver --------------------------------------------------------- */

struct dns;
struct dns_query;

struct dns_options {
    /* Resolvers as "IP", "IP:port", "[IPv6]:port" or a bare IPv6 address;
     * none (n_servers 0) means /etc/resolv.conf. Host names are refused
     * (resolving them would need DNS). */
    const char *const *servers;
    size_t n_servers;
    int timeout_ms;   /* wait for an answer from one server, each try */
    int tries;        /* rounds over the servers before a timeout (or a
                         failure of every server) is final; a lookup
                         takes at most timeout_ms x servers x tries */
    bool ipv6;        /* look up AAAA for hosts (dns_addrs, dns_mx_resolve) */
    bool prefer_ipv6; /* list IPv6 addresses before IPv4 */
    bool dnssec;      /* smtp_dns_support_level = dnssec: ask for and
                         read the AD bit (see the file header) */
    /* Resolvers whose AD bit is trusted, as "IP" or "IP/prefix" (IPv6 in
     * brackets or bare); n_validating 0 means loopback (127.0.0.0/8, ::1),
     * as Postfix assumes a local validating resolver. */
    const char *const *validating;
    size_t n_validating;
    size_t cache_size;    /* cached answers at most; 0: no cache */
    uint32_t max_ttl;     /* cap on any cached answer's life, seconds */
    uint32_t max_neg_ttl; /* cap on a negative answer's life, seconds */
};

/* Defaults: resolv.conf, 5000 ms, 3 tries, ipv6 on, prefer IPv4, no
 * DNSSEC, 1000 entries, max_ttl 86400, max_neg_ttl 3600. */
void dns_options_default(struct dns_options *o);

/* Parse one server string as dns_options accepts it. 0 or ERR_INVAL. port
 * is 53 when absent. addr receives 4 or 16 bytes. */
int dns_server_parse(const char *s, int *family, uint8_t addr[16], uint16_t *port);

/* Parse one entry of dns_options.validating: "IP", "IP/prefix",
 * "[IPv6]" or "[IPv6]/prefix". 0 or ERR_INVAL. */
int dns_cidr_parse(const char *s, int *family, uint8_t addr[16], unsigned *bits);

/*
 * Create a resolver on loop. With o->dnssec it logs whether the AD bit is
 * trusted (every server declared validating) or not (a warning naming the
 * first server that is not). 0 and *out, or ERR_INVAL (a bad server or
 * validating string, timeout_ms not in 1..600000, tries not in 1..100), ERR_DNS
 * (c-ares could not start, e.g. no resolv.conf), ERR_NOMEM. Logs the
 * reason with component "dns".
 */
int dns_new(uv_loop_t *loop, const struct dns_options *o, struct dns **out);

/*
 * Free the resolver. Pending lookups end without their callbacks being
 * called. The resolver's handles are closed; the memory is released from
 * their close callbacks, so the loop must run afterwards (as for any libuv
 * handle). dns_free(NULL) does nothing. Safe inside a dns callback.
 */
void dns_free(struct dns *d);

typedef void (*dns_cb)(void *arg, const struct dns_result *r);

/*
 * Look name up for records of type qtype (MX, A, AAAA, TXT or any other).
 * The callback gets the classified result: for MX, DNS_IMPLICIT_MX when
 * there are none and DNS_NULL_MX per RFC 7505. An invalid name is
 * reported through the callback as DNS_INVALID. q (may be NULL) receives a
 * handle for dns_cancel(). Returns 0, ERR_NOMEM or ERR_CLOSED (never with
 * the callback called).
 */
int dns_lookup(struct dns *d, const char *name, uint16_t qtype, dns_cb cb, void *arg,
               struct dns_query **q);

/*
 * A and AAAA of a host (AAAA only when options.ipv6), in parallel, merged:
 * addresses of the preferred family first. DNS_OK when any address was
 * found; otherwise DNS_TEMPFAIL if either lookup failed temporarily,
 * DNS_NXDOMAIN if the name does not exist, else DNS_NODATA. An IP address
 * literal is refused with DNS_INVALID.
 */
int dns_addrs(struct dns *d, const char *host, dns_cb cb, void *arg, struct dns_query **q);

/* One MX host of a domain, with its addresses. */
struct dns_mx_host {
    char *name; /* the MX target as published (never its CNAME target: that
                   is what certificates are checked against) */
    uint16_t pref;
    enum dns_status status; /* DNS_OK: addresses found; DNS_NXDOMAIN or
                               DNS_NODATA: unusable; DNS_TEMPFAIL: retry;
                               DNS_INVALID: an IP literal as MX target */
    int err;
    const char *why;
    bool cname;      /* the target was an alias (RFC 2181 10.3 forbids it; it is
                        followed anyway, as other MTAs do) */
    char *canonical; /* with cname: the name the chain ends at (where RFC
                        7672 2.2.3 looks for TLSA first); else NULL */
    bool secure;     /* DNSSEC: the address answers used (A, and AAAA with
                        ipv6) were all validated (RFC 7672 2.2.2) */
    size_t n_addr;
    struct dns_addr *addr;
};

struct dns_mx_result {
    /* DNS_OK (hosts from MX records), DNS_IMPLICIT_MX (one host: the
     * domain), DNS_NULL_MX, DNS_NXDOMAIN, DNS_INVALID, DNS_TEMPFAIL (the MX
     * lookup failed, or no host has an address and at least one failed
     * temporarily), DNS_NODATA (no host has an address: permanent). With
     * DNS_OK / DNS_IMPLICIT_MX at least one host has an address; the others
     * are listed with their own status. */
    enum dns_status status;
    int err;
    const char *why;
    char *domain;
    uint32_t ttl; /* of the MX answer */
    bool dnssec;  /* the resolver trusts DNSSEC status (dns_dnssec_trusted) */
    bool secure;  /* the MX answer (records, or for DNS_IMPLICIT_MX the proof
                     that there are none) was validated: only then may the
                     MX host names be used for DANE (RFC 7672 2.2.1) */
    size_t n_hosts;
    struct dns_mx_host *hosts; /* in delivery order */
};

typedef void (*dns_mx_cb)(void *arg, const struct dns_mx_result *r);

/*
 * Resolve a domain fully for delivery: MX (RFC 5321 5.1), then the
 * addresses of every MX host (or of the domain for an implicit MX). At most
 * DNS_MAX_MX_HOSTS hosts are kept (the most preferred).
 */
#define DNS_MAX_MX_HOSTS 16
int dns_mx_resolve(struct dns *d, const char *domain, dns_mx_cb cb, void *arg,
                   struct dns_query **q);

/* Cancel a pending lookup: its callback will never be called. q must be a
 * handle whose callback has not run yet. The work in flight finishes
 * quietly (its answer may still fill the cache). */
void dns_cancel(struct dns_query *q);

/* Drop every cached answer (e.g. on reload). */
void dns_cache_flush(struct dns *d);

/* Does this resolver ask for DNSSEC status and trust its servers' AD bit
 * (dns_options.dnssec and every server declared validating)? */
bool dns_dnssec_trusted(const struct dns *d);

/* ---- DANE: TLSA lookups (RFC 7672 2.2) ---------------------------------- */

/* The TLSA owner name of a service: "_25._tcp.mx.example.com" (RFC 6698 3,
 * RFC 7672 2.2). 0, or ERR_TOOBIG when it does not fit out (or exceeds a
 * DNS name's 253 characters). */
int dns_tlsa_qname(const char *host, uint16_t port, char *out, size_t size);

/* What a TLSA answer means for DANE (RFC 7672 2.2). */
enum dns_tlsa_status {
    DNS_TLSA_SECURE,   /* TLSA records, DNSSEC-validated: DANE applies to the
                          host (whether any record is usable is tls/'s
                          tls_dane_usable()) */
    DNS_TLSA_INSECURE, /* TLSA records, not validated (an unsigned zone, or
                          dnssec off): they must be ignored - no DANE */
    DNS_TLSA_NODATA,   /* the name exists without TLSA: no DANE
                          (result.secure says the denial was validated) */
    DNS_TLSA_NXDOMAIN, /* no such name: no DANE (result.secure as above) */
    DNS_TLSA_BOGUS,    /* SERVFAIL from trusted validating resolvers: a
                          signature that does not validate (or a broken
                          signed zone): defer the host, never downgrade */
    DNS_TLSA_FAIL,     /* any other lookup failure (timeout, malformed
                          answer, invalid name): defer the host */
};

/* Classify a TLSA lookup's result (qtype DNS_T_TLSA). Pure. */
enum dns_tlsa_status dns_tlsa_classify(const struct dns_result *r);
/* "secure", "insecure", "nodata", "nxdomain", "bogus", "fail". */
const char *dns_tlsa_status_name(enum dns_tlsa_status s);

/*
 * Look up the TLSA records of HOST's port (_PORT._tcp.HOST) as dns_lookup()
 * does; classify the result with dns_tlsa_classify(). The name is checked
 * and formed here; a host that gives no valid TLSA name is reported through
 * the callback as DNS_INVALID.
 */
int dns_tlsa_lookup(struct dns *d, const char *host, uint16_t port, dns_cb cb, void *arg,
                    struct dns_query **q);

#endif
