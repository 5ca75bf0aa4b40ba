/*
 * fuzz_tls_server.c - libFuzzer driver: arbitrary bytes as the ciphertext a
 * client sends to a server tls_conn (ClientHello parsing, record layer,
 * alerts, the handshake state machine).
 *
 * The input is fed in pieces whose size comes from the input itself (its
 * last byte), so record and message reassembly across
 * feeds is exercised; then the transport "ends" and the conn is freed.
 * Whatever happens must be a callback, never a crash, leak or hang.
 *
 * Seeds in corpus/tls_server/: ClientHellos recorded from the in-memory pair
 * of test_tls (CONVOY_TLS_SAVE_CLIENTHELLO) and from openssl s_client.
 *
 * The certificate and key below are a throwaway self-signed test pair made
 * for this driver (CN fuzz.invalid); they protect nothing.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base.h"
#include "tls.h"

static const char FUZZ_KEY[] = "-----BEGIN PRIVATE KEY-----\n"
                               "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgDIiUZgfrfEg23tS7\n"
                               "F8GJVTxX3rYcHWV/GsSBKhC9yLyhRANCAAT5P2d/V0RZTxIvsZKNPMKE2RvuJdi1\n"
                               "UslGrDbxAEwx/cb0ShsTjEFkbaXJ6OHkTVvTjwZ8yCfYiMHujwn+joM5\n"
                               "-----END PRIVATE KEY-----\n";

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
}

static void on_closed(void *arg, int status)
{
    (void)arg;
    (void)status;
}

static const struct tls_callbacks cbs = {on_cipher_out, on_plain_in, on_handshake, on_closed};

static int write_temp(char *path, const char *text)
{
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    size_t n = strlen(text);
    int ok = write(fd, text, n) == (ssize_t)n;
    close(fd);
    return ok ? 0 : -1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (getenv("CONVOY_FUZZ_DEBUG") != NULL)
        log_setup("fuzz_tls_server", "mail", LOG_TO_STDERR, true);
    char cert[] = "/tmp/fuzz_tls_cert.XXXXXX";
    char key[] = "/tmp/fuzz_tls_key.XXXXXX";
    char why[256] = "";
    if (write_temp(cert, FUZZ_CERT) == 0 && write_temp(key, FUZZ_KEY) == 0)
        ctx = tls_ctx_server_new(cert, key, why, sizeof why);
    unlink(cert);
    unlink(key);
    if (ctx == NULL) {
        fprintf(stderr, "fuzz_tls_server: %s\n", why);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int done = 0;
    struct tls_conn *conn = tls_conn_server_new(ctx, &cbs, &done);
    if (conn == NULL)
        abort();
    if (tls_conn_start(conn) != 0)
        abort();
    /* Piece size from the last byte (0: all at once). No byte is taken out
     * of the stream, so a recorded ClientHello stays one. */
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
