/*
 * fuzz_tls_client.c - libFuzzer driver: arbitrary bytes as the ciphertext a
 * server sends to a client tls_conn. This is the side that talks to MX hosts
 * on the internet: ServerHello and, in TLS 1.2, the Certificate message are
 * in the clear, so a hostile server's certificate reaches wolfSSL's parser
 * and our verify callback (SAN extraction, name matching, facts).
 *
 * The client runs in TLS_VERIFY_NONE mode, so that every certificate is
 * examined to the end, for the host fuzz.invalid. The input is fed in pieces
 * whose size is the input's last byte (0: all at once).
 *
 * Seeds in corpus/tls_client/: TLS 1.2 server first flights (ServerHello,
 * Certificate, ServerKeyExchange, ServerHelloDone) recorded from openssl
 * s_server answering a recorded ClientHello, with test certificates.
 *
 * The certificate below (trusted as the CA) is the throwaway self-signed
 * test certificate of fuzz_tls_server.c; it protects nothing.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base.h"
#include "tls.h"

static const char FUZZ_CERT[] = "-----BEGIN CERTIFICATE-----\n"
                                "MIIBnTCCAUSgAwIBAgIUYzPcjFpJXLa63VNrnWv8Gb3sNjowCgYIKoZIzj0EAwIw\n"
                                "FzEVMBMGA1UEAwwMZnV6ei5pbnZhbGlkMCAXDTI2MTEzMDE2NTQ1NVoYDzIxMjYx\n"
                                "MTA2MTY1NDU1WjAXMRUwEwYDVQQDDAxmdXp6LmludmFsaWQwWTATBgcqhkjOPQIB\n"
                                "BggqhkjOPQMBBwNCAAT5P2d/V0RZTxIvsZKNPMKE2RvuJdi1UslGrDbxAEwx/cb0\n"
                                "ShsTjEFkbaXJ6OHkTVvTjwZ8yCfYiMHujwn+joM5o2wwajAdBgNVHQ4EFgQUprGT\n"
                                "5cAFzqyxIXdObkpTxyBoQfcwHwYDVR0jBBgwFoAUprGT5cAFzqyxIXdObkpTxyBo\n"
                                "QfcwDwYDVR0TAQH/BAUwAwEB/zAXBgNVHREEEDAOggxmdXp6LmludmFsaWQwCgYI\n"
                                "KoZIzj0EAwIDRwAwRAIgRZ0r1yMGLqfGpX42AnW0ElJtxaQfQTJjkmTmQ8+sAtkC\n"
                                "ICrMPsmHusZJey0Rv7yA8t0Z7XhWnU/2Le/BWJ6SfUGs\n"
                                "-----END CERTIFICATE-----\n";

static struct tls_ctx *ctx;

static void on_cipher_out(void *arg, const void *data, size_t n)
{
    (void)arg;
    (void)data;
    (void)n;
}

static void on_plain_in(void *arg, const void *data, size_t n)
{
    (void)arg;
    (void)data;
    (void)n;
}

static void on_handshake(void *arg, int status, const struct tls_facts *facts)
{
    int *done = arg;
    *done = 1;
    if (status != 0 && facts->failure == TLS_FAIL_NONE)
        abort(); /* a failed handshake always says why */
    if (facts->n_peer_names > TLS_FACTS_NAMES_MAX || facts->text[sizeof facts->text - 1] != 0)
        abort();
}

static const struct tls_callbacks cbs = {on_cipher_out, on_plain_in, on_handshake, NULL};

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (getenv("CONVOY_FUZZ_DEBUG") != NULL)
        log_setup("fuzz_tls_client", "mail", LOG_TO_STDERR, true);
    char ca[] = "/tmp/fuzz_tls_ca.XXXXXX";
    char why[256] = "";
    int fd = mkstemp(ca);
    if (fd >= 0) {
        size_t n = strlen(FUZZ_CERT);
        if (write(fd, FUZZ_CERT, n) == (ssize_t)n)
            ctx = tls_ctx_client_new(ca, why, sizeof why);
        close(fd);
        unlink(ca);
    }
    if (ctx == NULL) {
        fprintf(stderr, "fuzz_tls_client: %s\n", why);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int done = 0;
    struct tls_conn *conn = tls_conn_client_new(ctx, "fuzz.invalid", TLS_VERIFY_NONE, &cbs, &done);
    if (conn == NULL || tls_conn_start(conn) != 0)
        abort();
    size_t piece = size > 0 && data[size - 1] != 0 ? data[size - 1] : size;
    for (size_t off = 0; off < size; off += piece) {
        size_t k = size - off < piece ? size - off : piece;
        if (tls_conn_feed(conn, data + off, k) != 0)
            break;
    }
    (void)tls_conn_eof(conn);
    if (!done && !tls_conn_established(conn))
        abort(); /* eof during the handshake must report it */
    tls_conn_free(conn);
    return 0;
}
