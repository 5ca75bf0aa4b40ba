/*
 * tls.h - public contract of the tls module: TLS sessions (wolfSSL) over
 * bytes that the owner moves between the socket and this module.
 *
 * The owner (an SMTP session, the MTA-STS policy fetcher) keeps its uv_tcp_t.
 * It hands every ciphertext byte it reads to tls_conn_feed() and writes every
 * ciphertext byte this module gives it (on_cipher_out) to the socket. Between
 * them wolfSSL runs with custom I/O callbacks over memory: the receive side
 * returns WANT_READ when the fed bytes are used up, the send side never
 * blocks. wolfSSL never touches a file descriptor.
 *
 *   uv_tcp_t --read--> tls_conn_feed() --on_plain_in--> line reader -> SMTP
 *   uv_tcp_t <-write-- on_cipher_out <--tls_conn_write()-- SMTP
 *
 * Standards:
 *  - RFC 8446 / RFC 5246: TLS 1.3 / 1.2 via wolfSSL; servers and verifying
 *    clients refuse anything older than TLS 1.2.
 *  - RFC 6066 3: the client sends SNI with the host name (not for IP literals).
 *  - RFC 6125 6.4, as RFC 8461 4.2 uses it: host name checks on the peer
 *    certificate (tls_name_matches(); SAN dNSName entries, the subject CN only
 *    when the certificate has no DNS SAN at all).
 *  - RFC 8460 4.3: failures are classified by TLS-RPT result type.
 *
 * The client never decides policy: it verifies when told to, and in every mode
 * it reports what it saw (struct tls_facts).
 *
 * Threads: a tls_conn is used by one thread (the loop thread). A tls_ctx may
 * be shared by conns on that thread; its reference count is atomic, so the
 * last tls_ctx_free() may happen on another thread.
 *
 * Invariants:
 *  - No call blocks. Callbacks run only from inside tls_conn_start(),
 *    tls_conn_feed(), tls_conn_write(), tls_conn_shutdown() and
 *    tls_conn_eof(), never later and never from a timer.
 *  - Memory per conn is bounded: fed ciphertext is read in place (never
 *    copied into a growing buffer), at most TLS_CIPHER_OUT_MAX bytes of
 *    ciphertext are held before on_cipher_out is called, and wolfSSL itself
 *    holds at most one record plus one handshake message (wolfSSL caps its
 *    size). A peer cannot make a conn grow without bound.
 *  - A call that returns an error ran no callback for that error: errors
 *    reported by return value are not reported again through callbacks.
 */
#ifndef CONVOY_TLS_H
#define CONVOY_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* ---- facts ------------------------------------------------------------ */

/* Why verification failed (or would have failed), aligned with the RFC 8460
 * 4.3 result types. */
enum tls_failure {
    TLS_FAIL_NONE = 0,               /* verified, or nothing went wrong */
    TLS_FAIL_STARTTLS_NOT_SUPPORTED, /* never set by tls/: for the SMTP client
                                        to report "starttls-not-supported" */
    TLS_FAIL_HOST_MISMATCH,          /* certificate does not name the host */
    TLS_FAIL_CERT_EXPIRED,           /* expired or not yet valid */
    TLS_FAIL_CERT_NOT_TRUSTED,       /* no chain to a trusted root (incl.
                                        self-signed) */
    TLS_FAIL_VALIDATION,             /* other certificate problem (bad
                                        signature, no certificate, ...) */
    TLS_FAIL_HANDSHAKE,              /* the handshake failed for a reason not
                                        about the certificate: protocol
                                        version, ciphers, alert, garbage,
                                        connection closed */
};

/* Verification mode of a client conn. */
enum tls_verify {
    /* Opportunistic: accept any certificate, but still record whether the
     * chain and the host name would have verified (facts.chain_ok,
     * facts.name_ok, facts.failure). */
    TLS_VERIFY_NONE = 0,
    /* The certificate must chain to a trusted root, be within its validity
     * dates and name the host (RFC 6125 as above); otherwise the handshake
     * fails with the reason in facts.failure. TLS 1.2 or newer. */
    TLS_VERIFY_HOST = 1,
};

#define TLS_FACTS_NAMES_MAX 8  /* DNS SANs recorded in the facts (all are matched) */
#define TLS_FACTS_NAME_LEN 256 /* bytes per recorded name, incl. NUL */

/* What a session was. A plain value: copy it freely. Strings are always
 * NUL-terminated; "" when unknown. Names taken from certificates are recorded
 * only if they are printable ASCII (others are replaced by "?"). */
struct tls_facts {
    bool is_server;
    enum tls_verify mode;          /* client: the mode asked for */
    bool handshake_done;           /* the handshake completed */
    char version[16];              /* "TLSv1.3", "TLSv1.2" */
    char cipher[64];               /* e.g. "TLS_AES_128_GCM_SHA256" */
    char group[24];                /* key exchange, e.g. "X25519", "SECP256R1" */
    char host[TLS_FACTS_NAME_LEN]; /* client: host asked for (SNI) */

    /* Client only: the peer certificate (the leaf). */
    bool peer_cert;                   /* the server presented one */
    char peer_cn[TLS_FACTS_NAME_LEN]; /* subject CN */
    char peer_issuer_cn[TLS_FACTS_NAME_LEN];
    char peer_names[TLS_FACTS_NAMES_MAX][TLS_FACTS_NAME_LEN]; /* DNS SANs */
    size_t n_peer_names;                                      /* entries used in peer_names */
    size_t n_peer_names_total;                                /* DNS SANs in the certificate */

    /* Client only: verification results, in every mode. */
    bool chain_ok; /* chain to a trusted root, all certificates in date */
    bool name_ok;  /* the certificate names facts.host */
    bool verified; /* chain_ok && name_ok */
    /* The first reason found; TLS_FAIL_NONE when verified and the handshake
     * completed. In TLS_VERIFY_NONE mode a certificate failure is recorded
     * here while the handshake still succeeds. */
    enum tls_failure failure;
    /* Human text for failure, e.g. "certificate verification failed for
     * mx.example.com: certificate has expired". "" when failure is NONE. */
    char text[256];
};

/* The RFC 8460 4.3 result type for a failure ("certificate-expired", ...);
 * TLS_FAIL_HANDSHAKE reports "validation-failure". NULL for TLS_FAIL_NONE. */
const char *tls_failure_result_type(enum tls_failure f);
/* A short static description ("certificate has expired"). Never NULL. */
const char *tls_failure_str(enum tls_failure f);

/* ---- name matching ----------------------------------------------------- */

/* Does a certificate DNS name (pattern) name the reference host?
 * RFC 6125 6.4 as RFC 8461 4.2 applies it: ASCII case-insensitive; one
 * trailing dot on either side is ignored; a wildcard is only a whole leftmost
 * label "*." and matches exactly one non-empty label, and only when at least
 * two labels follow it ("*.com" matches nothing); any other '*'
 * ("f*.example.com", "a.*.example.com") makes the pattern match nothing.
 * Empty labels, spaces and non-ASCII bytes match nothing. NULL matches
 * nothing. */
bool tls_name_matches(const char *pattern, const char *host);
/* The same rule, with the reason: NULL when pattern names host, else a short
 * static text saying why not ("a wildcard matches one label only, not
 * several (RFC 6125 6.4.3, RFC 8461 4.1)", "another name", ...).
 * tls_name_matches() is exactly tls_name_mismatch() == NULL. */
const char *tls_name_mismatch(const char *pattern, const char *host);

/* ---- an operator's certificate check ----------------------------------- */

#define TLS_CHECK_NAMES_MAX 100

/* What tls_check_cert_file() found. */
struct tls_cert_check {
    bool chain_valid; /* every certificate chains to a trusted root and is
                         within its validity period */
    bool name_match;  /* a reference name of the leaf names the host */
    bool expired;     /* the leaf or a certificate after it in the file is
                         past its notAfter */
    /* The names the rule was applied to: the leaf's DNS SANs in order, or its
     * subject CN when it has no DNS SAN at all (names_from_cn). Printable
     * ASCII; a name that is not becomes "?". */
    char names[TLS_CHECK_NAMES_MAX][TLS_FACTS_NAME_LEN];
    size_t n_names;
    bool names_from_cn;
    enum tls_failure failure; /* the first reason, as a delivery would
                                 classify it; TLS_FAIL_NONE when both hold */
    char error[1024];         /* why not, for people; "" when both hold */
};

/*
 * Check a PEM certificate file (the leaf first; a chain may follow) as a
 * delivery in TLS_VERIFY_HOST mode checks a server's certificate for host:
 * the trust store of tls_ctx_client_new(ca_file) (NULL: the system store),
 * wolfSSL's chain verification with the certificates after the leaf as
 * untrusted intermediates, the same failure classification, and the same
 * name rule on the same names (DNS SANs, else the CN; tls_name_mismatch()).
 * Returns 0 with the verdict in *out, or ERR_INVAL / ERR_NOMEM when the
 * check could not run (no readable certificate in the file, a bad CA file),
 * with the reason in why.
 */
int tls_check_cert_file(const char *cert_file, const char *host, const char *ca_file,
                        struct tls_cert_check *out, char *why, size_t why_size);

/* ---- contexts --------------------------------------------------------- */

/* A wolfSSL_CTX with its settings. Reference counted: each conn holds a
 * reference, so a reload can build a new ctx and tls_ctx_free() the old one
 * while live conns go on using it. */
struct tls_ctx;

/* A server context from a PEM certificate chain file (leaf first) and a PEM
 * private key file. TLS 1.2 and newer. NULL on failure, with a text naming
 * the file and the reason in why (if why is not NULL). */
struct tls_ctx *tls_ctx_server_new(const char *cert_file, const char *key_file, char *why,
                                   size_t why_size);

/* A client context. ca_file NULL: the system trust store (wolfSSL's system
 * CA loading, else /etc/ssl/certs/ca-certificates.crt); otherwise a PEM file
 * of trusted roots, or a directory of hashed PEM files. NULL on failure, with
 * the reason in why. */
struct tls_ctx *tls_ctx_client_new(const char *ca_file, char *why, size_t why_size);

/* Take another reference; returns ctx. */
struct tls_ctx *tls_ctx_ref(struct tls_ctx *ctx);
/* Drop a reference; the context goes when the last conn made from it and the
 * last reference are gone. tls_ctx_free(NULL) does nothing. */
void tls_ctx_free(struct tls_ctx *ctx);

/* ---- connections ------------------------------------------------------- */

struct tls_conn;

/* Ciphertext to write to the socket. data is valid only during the call:
 * copy it (or uv_try_write it and copy the rest). */
typedef void tls_cipher_out_cb(void *arg, const void *data, size_t n);
/* Decrypted application bytes, in order. data is valid only during the call;
 * the owner must take all n bytes (a line reader with its own bound turns an
 * overlong line into a protocol error). */
typedef void tls_plain_in_cb(void *arg, const void *data, size_t n);
/* The handshake ended: status 0 (established; tls_conn_write() may be called
 * from here on, also from inside this callback) or ERR_TLS (failed; the conn
 * is dead, free it). facts is the conn's own, valid until tls_conn_free();
 * copy the struct to keep it. Called at most once per conn. */
typedef void tls_handshake_cb(void *arg, int status, const struct tls_facts *facts);
/* An established session ended: status 0 when the peer sent close_notify,
 * ERR_TLS on a fatal record error or alert from the peer, ERR_CLOSED when the
 * transport ended without close_notify (tls_conn_eof()). Called at most once,
 * and only after on_handshake reported 0. The owner may still call
 * tls_conn_shutdown() to answer with its own close_notify. May be NULL. */
typedef void tls_closed_cb(void *arg, int status);

struct tls_callbacks {
    tls_cipher_out_cb *on_cipher_out; /* required */
    tls_plain_in_cb *on_plain_in;     /* required */
    tls_handshake_cb *on_handshake;   /* required */
    tls_closed_cb *on_closed;         /* optional */
};

#define TLS_CIPHER_OUT_MAX (64 * 1024) /* ciphertext held before on_cipher_out */

/*
 * Callback rules (read these before writing an owner):
 *  - Callbacks run synchronously inside the tls_conn_* call that caused them.
 *    Ciphertext produced by a call is always passed to on_cipher_out before
 *    that call returns, and before the on_handshake / on_closed it led to.
 *  - From on_plain_in, on_handshake and on_closed the owner may call
 *    tls_conn_write(), tls_conn_shutdown(), tls_conn_facts() and
 *    tls_conn_free(). It must not call tls_conn_feed() or tls_conn_eof()
 *    (they return ERR_INVAL there).
 *  - From on_cipher_out (which can run inside wolfSSL) the owner may call
 *    only tls_conn_free(); every other call returns ERR_INVAL.
 *  - tls_conn_free() inside a callback is allowed: no further callback runs,
 *    and the memory is released when the outermost tls_conn_* call returns.
 *    The owner must not touch the conn after calling tls_conn_free().
 *    (Owners that follow the "mark closing, free in the uv close callback"
 *    rule never need this, but it is safe.)
 */

/* A server conn on a server ctx (holds a ctx reference). Nothing happens until
 * tls_conn_start(). NULL on allocation failure or a client ctx. */
struct tls_conn *tls_conn_server_new(struct tls_ctx *ctx, const struct tls_callbacks *cb,
                                     void *arg);

/* A client conn on a client ctx (holds a ctx reference). host is sent as SNI
 * (unless it is an IP literal; one trailing dot is dropped) and is the name
 * the certificate is checked against, in both modes. host may be NULL only
 * with TLS_VERIFY_NONE (no SNI; name_ok stays false). NULL on allocation
 * failure or bad arguments. */
struct tls_conn *tls_conn_client_new(struct tls_ctx *ctx, const char *host, enum tls_verify verify,
                                     const struct tls_callbacks *cb, void *arg);

/* Start the handshake. A client sends its ClientHello (on_cipher_out runs
 * before this returns); a server starts waiting for one. 0, or ERR_INVAL if
 * already started or inside a callback. */
int tls_conn_start(struct tls_conn *conn);

/* Hand over n bytes of ciphertext read from the socket (any n; the bytes are
 * read in place, not copied). Drives the handshake and delivers plaintext;
 * everything that follows is reported through callbacks, including a failed
 * handshake (on_handshake with ERR_TLS) or a failed session (on_closed).
 * Returns 0 when the bytes were taken (all of them, or the rest was dropped
 * because the session ended during them); ERR_CLOSED if the conn had already
 * failed or ended before this call (no callback runs); ERR_INVAL before
 * tls_conn_start() or inside a callback. */
int tls_conn_feed(struct tls_conn *conn, const void *data, size_t n);

/* The transport ended (EOF or read error on the socket). During the
 * handshake this fails it (on_handshake with ERR_TLS, failure
 * TLS_FAIL_HANDSHAKE); after it, on_closed(ERR_CLOSED) runs unless the
 * session had already ended. 0, or ERR_INVAL inside a callback. */
int tls_conn_eof(struct tls_conn *conn);

/* Encrypt n bytes of plaintext (any n; 0 is fine). The ciphertext reaches
 * on_cipher_out before this returns. 0; ERR_AGAIN before the handshake has
 * completed; ERR_CLOSED after a failure, tls_conn_shutdown() or the peer's
 * close_notify; ERR_TLS if wolfSSL fails now (the conn is then dead and no
 * callback reports it); ERR_INVAL from on_cipher_out. */
int tls_conn_write(struct tls_conn *conn, const void *data, size_t n);

/* Send close_notify (RFC 8446 6.1) through on_cipher_out; after this
 * tls_conn_write() returns ERR_CLOSED, while fed bytes are still decrypted
 * and delivered. Does not wait for the peer's close_notify. Calling it twice,
 * before the handshake completed, or after a failure is a no-op returning 0.
 * ERR_INVAL from on_cipher_out. */
int tls_conn_shutdown(struct tls_conn *conn);

/* The facts so far (complete once on_handshake has run). Valid until
 * tls_conn_free(). */
const struct tls_facts *tls_conn_facts(const struct tls_conn *conn);

/* Is the session established and not ended? */
bool tls_conn_established(const struct tls_conn *conn);

/* Free the conn and drop its ctx reference. Sends nothing (call
 * tls_conn_shutdown() first for a clean close). NULL does nothing. Allowed
 * inside callbacks (see the rules above). */
void tls_conn_free(struct tls_conn *conn);

/* ---- DANE (RFC 7672 for SMTP; RFC 6698, RFC 7671) ----------------------- */

/*
 * TLSA matching for DANE, in tls/dane.c. The caller (the delivery verdict)
 * gets the TLSA RRset from dns/ (only a DNSSEC-secure one counts), runs the
 * handshake in TLS_VERIFY_NONE mode with SNI = the MX host name, takes the
 * peer chain with tls_conn_peer_chain() and calls tls_dane_verify(). Pure
 * functions over bytes: no I/O, no state, any thread.
 *
 * What is implemented (and why):
 *  - Usages DANE-TA(2) and DANE-EE(3) only: PKIX-TA(0) and PKIX-EE(1) are
 *    unusable for SMTP (RFC 7672 3.1.3). Selectors Cert(0) and SPKI(1);
 *    matching types Full(0), SHA2-256(1), SHA2-512(2) (RFC 6698 2.1). Any
 *    other value, or a digest of the wrong length, makes a record unusable
 *    (RFC 7671 4.1): it is skipped, never an error.
 *  - Digest agility (RFC 7671 9): for each (usage, selector) only records of
 *    the strongest digest present are used (SHA2-512 over SHA2-256), so a
 *    server can retire a weak digest; Full(0) records are not digests and
 *    are always used.
 *  - DANE-EE(3): the leaf certificate (selector 0) or its key (selector 1)
 *    matches; names, dates and the rest of the chain are not looked at
 *    (RFC 7672 3.1.1, RFC 7671 5.1).
 *  - DANE-TA(2): some certificate of the presented chain (or, for a 2 1 0
 *    record, the full public key in the record itself: RFC 7672 3.1.2 lets
 *    the server leave out a TA it names by its key) is the trust anchor; the
 *    chain from the leaf up to it must verify link by link (each signature
 *    checked by wolfSSL with the next certificate's key, issuer names equal,
 *    every issuer a CA by basicConstraints, every certificate below the
 *    anchor within its dates), and the leaf must name one of the reference
 *    names (RFC 7672 3.2.2: the MX host name, or the recipient domain;
 *    RFC 6125 rules as tls_name_matches(): DNS SANs, the CN only when there
 *    is no DNS SAN). Not checked: pathLenConstraint, name constraints, key
 *    usage; a TA given only by a digest of its key (2 1 1, 2 1 2) must be in
 *    the chain, since a digest cannot verify a signature. The chain is
 *    taken as sent: leaf first, each certificate followed by its issuer
 *    (RFC 8446 4.4.2 / RFC 5246 7.4.2 order).
 */

enum { TLS_DANE_TA = 2, TLS_DANE_EE = 3 };
enum { TLS_DANE_SEL_CERT = 0, TLS_DANE_SEL_SPKI = 1 };
enum { TLS_DANE_MT_FULL = 0, TLS_DANE_MT_SHA256 = 1, TLS_DANE_MT_SHA512 = 2 };

/* One TLSA record (as dns/ decodes it: struct dns_tlsa has the same fields,
 * copy them over). data is borrowed. */
struct tls_tlsa {
    uint8_t usage, selector, mtype;
    const uint8_t *data;
    size_t len;
};

/* One DER certificate of a chain (borrowed bytes). */
struct tls_der {
    const uint8_t *data;
    size_t len;
};

/* Is this record usable for SMTP DANE at all (usage 2 or 3, selector 0 or
 * 1, matching type 0, 1 or 2 with the digest's length, non-empty data)? */
bool tls_tlsa_usable(const struct tls_tlsa *r);

/* How many records of the set are usable and survive digest agility. 0
 * means "TLSA present but none usable": per RFC 7672 2.2 (and Postfix) the
 * host gets mandatory TLS without authentication. */
size_t tls_dane_usable_count(const struct tls_tlsa *recs, size_t n);

enum tls_dane_status {
    TLS_DANE_VERIFIED = 0,
    TLS_DANE_NO_USABLE, /* no usable record (the caller should not call) */
    TLS_DANE_NO_CERT,   /* the server sent no certificate */
    TLS_DANE_NO_MATCH,  /* no record matches the chain */
    TLS_DANE_BAD_CHAIN, /* DANE-TA matched, but the chain below it does not
                           verify (signature, issuer, not a CA) */
    TLS_DANE_EXPIRED,   /* DANE-TA: a certificate below the anchor is
                           expired or not yet valid */
    TLS_DANE_NAME,      /* DANE-TA: the leaf names none of the names */
    TLS_DANE_BAD_INPUT, /* a certificate does not parse */
};

struct tls_dane_result {
    enum tls_dane_status status;
    /* The record that decided: its index in recs and its fields (for the
     * log line "dane=verified 3 1 1"), or -1 when none matched. */
    int record;
    uint8_t usage, selector, mtype;
    int depth;                /* chain position of the matched certificate
                                 (0 the leaf), -1 for a TA key from the
                                 record or no match */
    enum tls_failure failure; /* TLS-RPT view: TLS_FAIL_NONE, or
                                 TLS_FAIL_VALIDATION / _HOST_MISMATCH /
                                 _CERT_EXPIRED */
    char text[256];           /* "dane=verified 3 1 1 depth 0" or the reason */
};

/* "verified", "no-usable-record", "no-certificate", "no-match",
 * "bad-chain", "expired", "name-mismatch", "bad-certificate". */
const char *tls_dane_status_name(enum tls_dane_status s);

/*
 * Check a presented chain (leaf first) against a TLSA RRset under the rules
 * above. names: the reference names for DANE-TA (the MX host name first,
 * then the recipient domain; n_names may be 0 only if no TA record is
 * given). EE records are tried before TA records; the first match that
 * verifies wins. Always fills *out; returns 0 for TLS_DANE_VERIFIED, else
 * ERR_TLS (ERR_NOMEM when memory ran out).
 */
int tls_dane_verify(const struct tls_tlsa *recs, size_t n_recs, const struct tls_der *chain,
                    size_t n_chain, const char *const *names, size_t n_names,
                    struct tls_dane_result *out);

/*
 * The peer's certificate chain as received (leaf first), for
 * tls_dane_verify(): at most max entries; the bytes belong to the conn and
 * stay valid until tls_conn_free(). Returns the number filled (0 before the
 * handshake or without a certificate).
 */
size_t tls_conn_peer_chain(const struct tls_conn *conn, struct tls_der *out, size_t max);
/* ---- streams ------------------------------------------------------------ */

/*
 * struct tls_stream: one TCP connection on the libuv loop with optional TLS,
 * the one transport every TCP user (SMTP server and client sessions, the
 * MTA-STS policy fetcher) goes through. It owns a uv_tcp_t and, once TLS is
 * started, a tls_conn fed from memory buffers (never wolfSSL_set_fd).
 *
 *   owner --tls_stream_write()--> queue --(loop idle)--> [tls_conn] --> write(2)
 *   owner <--on_read (plaintext)-- [tls_conn] <-- read(2)
 *
 * Either side (tls_stream_connect() or tls_stream_accept()); TLS from the
 * first byte (call tls_stream_start_tls() before anything is written) or
 * upgraded mid-stream (STARTTLS: after the plaintext reply was queued).
 *
 * Writing. tls_stream_write() copies the bytes into the stream's queue and
 * returns; nothing is written to the socket then. The queue is flushed once
 * per loop iteration (by a uv_idle_t, before the loop next polls), so every
 * write issued in one iteration goes out together: for TLS, the plaintext is
 * encrypted as one run (one record up to 16 KiB) and the ciphertext written
 * with one uv_try_write(), the rest (if the socket is full) with one
 * uv_write(). tls_stream_shutdown() and tls_stream_close() flush at once.
 * The queue is bounded: queued plaintext plus ciphertext not yet taken by
 * the kernel never exceeds opts.write_max; a write that would pass it fails
 * with ERR_TOOBIG and queues nothing.
 *
 * Reading. Between tls_stream_read_start() and tls_stream_read_stop(), each
 * socket read is delivered as plaintext through on_read (decrypted when TLS
 * is on; a read may be delivered in more than one call but never merged with
 * the next read). What follows the bytes of a read (the end of the input, a
 * failed handshake) is reported after them.
 *
 * Timeouts are the owner's: the stream has no timer. The owner arms its own
 * and calls tls_stream_close() when it fires.
 *
 * Contracts, in libuv's style:
 *  - Callbacks never run inside a tls_stream_* call; they run from libuv
 *    callbacks only. If a call returns an error, no callback reports it.
 *  - The owner may call any tls_stream_* function from any callback,
 *    including tls_stream_close().
 *  - After tls_stream_close() no callback runs but on_close, exactly once,
 *    from the loop; the stream is freed when on_close returns. Never free a
 *    stream otherwise: tls_stream_close() is the only way, also for a stream
 *    that never connected.
 *  - on_end runs at most once, and on_handshake at most once per
 *    tls_stream_start_tls().
 *  - Threads: the loop thread only.
 */
struct tls_stream;

/* A client connect ended: status 0 (connected) or a libuv error code. */
typedef void tls_stream_connect_cb(void *arg, int status);
/* Plaintext from the peer; valid during the call only. */
typedef void tls_stream_read_cb(void *arg, const void *data, size_t n);
/* The TLS handshake ended: as tls_handshake_cb. On 0, tls_stream_write()
 * encrypts from here on. On ERR_TLS the stream is still open: close it. */
typedef void tls_stream_handshake_cb(void *arg, int status, const struct tls_facts *facts);
/* The input ended. status: ERR_CLOSED when the transport ended (EOF, reset
 * or a read error; for TLS, without close_notify); 0 when a TLS peer sent
 * close_notify; ERR_TLS on a fatal TLS record error or alert. Not called for
 * a failure during the handshake (on_handshake reports that). uv_status is
 * the libuv read error (UV_EOF, UV_ECONNRESET, ...) for ERR_CLOSED, else 0. */
typedef void tls_stream_end_cb(void *arg, int status, int uv_status);
/* Queued bytes went out (status 0: tls_stream_queued() went down), or
 * writing failed (status: a libuv error code, UV_EPROTO when encryption
 * failed); after a failure the stream writes no more: close it. */
typedef void tls_stream_written_cb(void *arg, int status);
/* The stream is closed; it is freed when this returns. */
typedef void tls_stream_close_cb(void *arg);

struct tls_stream_callbacks {
    tls_stream_connect_cb *on_connect;     /* required for tls_stream_connect() */
    tls_stream_read_cb *on_read;           /* required */
    tls_stream_handshake_cb *on_handshake; /* required for tls_stream_start_tls() */
    tls_stream_end_cb *on_end;             /* required */
    tls_stream_written_cb *on_written;     /* optional */
    tls_stream_close_cb *on_close;         /* optional */
};

#define TLS_STREAM_READ_CHUNK (64 * 1024)  /* bytes per socket read */
#define TLS_STREAM_WRITE_MAX (1024 * 1024) /* default write queue bound */

struct tls_stream_opts {
    size_t write_max; /* queued bytes at most; 0: TLS_STREAM_WRITE_MAX */
};

/* A stream on loop with its uv_tcp_t initialised, not connected. opts may be
 * NULL. NULL on allocation failure (nothing to close then). */
struct tls_stream *tls_stream_new(uv_loop_t *loop, const struct tls_stream_callbacks *cb, void *arg,
                                  const struct tls_stream_opts *opts);

/* Client side: connect to addr (AF_INET or AF_INET6); on_connect follows.
 * 0, or a libuv error (on_connect will not run). */
int tls_stream_connect(struct tls_stream *s, const struct sockaddr *addr);

/* Server side: uv_accept() a pending connection of listener. 0, or a libuv
 * error (close the stream). */
int tls_stream_accept(struct tls_stream *s, uv_stream_t *listener);

/* The TCP handle, for uv_tcp_getpeername(), uv_tcp_nodelay() and the like.
 * Never close it, read from it or write to it directly. */
uv_tcp_t *tls_stream_tcp(struct tls_stream *s);

/* Start or stop delivering reads (flow control). 0, or a libuv error. */
int tls_stream_read_start(struct tls_stream *s);
void tls_stream_read_stop(struct tls_stream *s);

/* Start TLS on the stream: a server session on a server ctx after
 * tls_stream_accept(), or a client session (host, verify as in
 * tls_conn_client_new()) after tls_stream_connect(). Plaintext already
 * queued (the STARTTLS reply) goes out first, in the clear; bytes read from
 * now on are ciphertext. on_handshake follows. 0; ERR_INVAL when TLS was
 * started already, the stream is closing or the ctx is of the wrong side;
 * ERR_NOMEM. */
int tls_stream_start_tls(struct tls_stream *s, struct tls_ctx *ctx, const char *host,
                         enum tls_verify verify);

/* Queue n bytes of plaintext (copied). 0; ERR_TOOBIG past write_max;
 * ERR_AGAIN while a TLS handshake is in progress; ERR_CLOSED after
 * tls_stream_shutdown(), tls_stream_close(), a write failure, or the end of
 * the TLS session; ERR_NOMEM. */
int tls_stream_write(struct tls_stream *s, const void *data, size_t n);

/* Bytes queued and not yet taken by the kernel. */
size_t tls_stream_queued(const struct tls_stream *s);

/* Graceful end: stop reading, flush the queue, send TLS close_notify when
 * TLS is on, then shut the TCP write side down (FIN) once everything is
 * written; the stream then closes itself (on_close follows). Does not wait
 * for the peer; the owner's timer bounds the wait (tls_stream_close() ends
 * it). Calling it twice does nothing. */
void tls_stream_shutdown(struct tls_stream *s);

/* Close now: stop reading, send close_notify if TLS is on, try once to
 * write what is queued without blocking, drop the rest, close the socket.
 * on_close follows from the loop. Calling it twice does nothing. */
void tls_stream_close(struct tls_stream *s);

/* TLS state: the facts of the session (NULL before tls_stream_start_tls()),
 * and whether the handshake completed and the session has not ended. */
const struct tls_facts *tls_stream_facts(const struct tls_stream *s);
bool tls_stream_tls_active(const struct tls_stream *s);
/* The peer's certificate chain (tls_conn_peer_chain()), for DANE; 0 before
 * the handshake or without TLS. */
size_t tls_stream_peer_chain(const struct tls_stream *s, struct tls_der *out, size_t max);

#endif
