/*
 * bench_sink.c - a fast SMTP sink with STARTTLS for the delivery benchmarks:
 * the next hop that both MTAs under test deliver to.
 *
 * usage: bench_sink [-c CHAIN -k KEY] [-h HOSTNAME] [-e STEP] ADDR:PORT
 *
 * It answers every command at once and keeps nothing: EHLO (PIPELINING,
 * 8BITMIME, SIZE, and STARTTLS when -c/-k are given), STARTTLS (RFC 3207),
 * MAIL, RCPT, DATA (RFC 5321 4.5.2: the data ends at CRLF . CRLF; lines are
 * read and thrown away), RSET, NOOP, QUIT. Each accepted message is counted;
 * each time the count reaches a multiple of STEP (default 100) one line
 * "COUNT SECONDS.NANOSECONDS" (wall clock, CLOCK_REALTIME) goes to standard
 * output, so a script can tell when the sink has all N messages of a run and
 * when the last one arrived. "250" to the end of data is the moment the sink
 * has a message.
 *
 * Why not smtp-sink (the postfix package): it has no TLS. Why not a Python
 * sink: one thread of Python per message stream became the bottleneck of
 * the whole benchmark. Why not a second MTA: it would spend as much CPU as
 * the MTA under test on the same two cores. This sink spends per message one
 * TLS record or two each way and a few string compares.
 *
 * Design: one thread per connection, blocking sockets, wolfSSL on the socket
 * (this program owns its sockets; there is no event loop here). Replies are
 * collected and written when the client has nothing more buffered, so a
 * pipelined MAIL/RCPT/DATA group gets its answers in one write (RFC 2920).
 * Nothing here is meant for anything but benchmarks on loopback.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#define IN_MAX 65536
#define OUT_MAX 4096

static WOLFSSL_CTX *tls_ctx;
static const char *hostname = "sink.test";
static unsigned long step = 100;
static atomic_ulong delivered;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

struct conn {
    int fd;
    WOLFSSL *ssl; /* NULL until STARTTLS */
    char in[IN_MAX];
    size_t in_len;
    char out[OUT_MAX];
    size_t out_len;
};

static int conn_write(struct conn *c, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w;
        if (c->ssl != NULL) {
            int r = wolfSSL_write(c->ssl, p, (int)n);
            w = r > 0 ? r : -1;
        } else {
            w = write(c->fd, p, n);
            if (w < 0 && errno == EINTR)
                continue;
        }
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int flush_out(struct conn *c)
{
    int r = c->out_len ? conn_write(c, c->out, c->out_len) : 0;
    c->out_len = 0;
    return r;
}

/* Queue a reply; write everything queued when the client has no more
 * commands buffered (the end of a pipelined group) or the buffer is full. */
static int reply(struct conn *c, const char *text)
{
    size_t n = strlen(text);
    if (c->out_len + n > OUT_MAX && flush_out(c) < 0)
        return -1;
    memcpy(c->out + c->out_len, text, n);
    c->out_len += n;
    return 0;
}

/* Read more input; -1 on end of stream or error. */
static int fill(struct conn *c)
{
    if (c->in_len == IN_MAX)
        return -1;
    if (flush_out(c) < 0)
        return -1;
    for (;;) {
        ssize_t r;
        if (c->ssl != NULL) {
            int n = wolfSSL_read(c->ssl, c->in + c->in_len, (int)(IN_MAX - c->in_len));
            r = n > 0 ? n : -1;
        } else {
            r = read(c->fd, c->in + c->in_len, IN_MAX - c->in_len);
            if (r < 0 && errno == EINTR)
                continue;
        }
        if (r <= 0)
            return -1;
        c->in_len += (size_t)r;
        return 0;
    }
}

/* The next line (with its LF) into *line, *len; -1 at end of stream. A line
 * longer than the buffer comes back in pieces, each without an LF. */
static int next_line(struct conn *c, size_t *len, size_t *consumed)
{
    for (;;) {
        char *lf = memchr(c->in, '\n', c->in_len);
        if (lf != NULL) {
            *len = (size_t)(lf - c->in) + 1;
            *consumed = *len;
            return 0;
        }
        if (c->in_len == IN_MAX) {
            *len = *consumed = c->in_len;
            return 0;
        }
        if (fill(c) < 0)
            return -1;
    }
}

static void consume(struct conn *c, size_t n)
{
    memmove(c->in, c->in + n, c->in_len - n);
    c->in_len -= n;
}

static void count_one(void)
{
    unsigned long n = atomic_fetch_add(&delivered, 1) + 1;
    if (n % step == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        pthread_mutex_lock(&out_lock);
        printf("%lu %lld.%09ld\n", n, (long long)ts.tv_sec, ts.tv_nsec);
        fflush(stdout);
        pthread_mutex_unlock(&out_lock);
    }
}

/* Read the message up to and including the line ".": -1 on end of stream. */
static int read_data(struct conn *c)
{
    int line_start = 1;
    for (;;) {
        size_t len, used;
        if (next_line(c, &len, &used) < 0)
            return -1;
        int ends_line = c->in[len - 1] == '\n';
        if (line_start && ends_line &&
            ((len == 3 && memcmp(c->in, ".\r\n", 3) == 0) || (len == 2 && c->in[0] == '.'))) {
            consume(c, used);
            return 0;
        }
        line_start = ends_line;
        consume(c, used);
    }
}

static int is_cmd(const char *line, size_t len, const char *cmd)
{
    size_t n = strlen(cmd);
    return len >= n && strncasecmp(line, cmd, n) == 0;
}

static void session(struct conn *c)
{
    char buf[512];
    snprintf(buf, sizeof buf, "220 %s ESMTP bench sink\r\n", hostname);
    if (reply(c, buf) < 0)
        return;
    for (;;) {
        size_t len, used;
        if (next_line(c, &len, &used) < 0)
            return;
        const char *l = c->in;
        int rc = 0;
        if (is_cmd(l, len, "EHLO")) {
            snprintf(buf, sizeof buf,
                     "250-%s\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n250-8BITMIME\r\n%s"
                     "250 ENHANCEDSTATUSCODES\r\n",
                     hostname, tls_ctx != NULL && c->ssl == NULL ? "250-STARTTLS\r\n" : "");
            rc = reply(c, buf);
        } else if (is_cmd(l, len, "HELO")) {
            snprintf(buf, sizeof buf, "250 %s\r\n", hostname);
            rc = reply(c, buf);
        } else if (is_cmd(l, len, "MAIL")) {
            rc = reply(c, "250 2.1.0 Ok\r\n");
        } else if (is_cmd(l, len, "RCPT")) {
            rc = reply(c, "250 2.1.5 Ok\r\n");
        } else if (is_cmd(l, len, "DATA")) {
            consume(c, used);
            if (reply(c, "354 End data with <CR><LF>.<CR><LF>\r\n") < 0 || read_data(c) < 0)
                return;
            count_one();
            if (reply(c, "250 2.0.0 Ok: queued\r\n") < 0)
                return;
            continue;
        } else if (is_cmd(l, len, "STARTTLS") && tls_ctx != NULL && c->ssl == NULL) {
            consume(c, used);
            /* RFC 3207 4: nothing may follow STARTTLS in plaintext. */
            if (c->in_len != 0 || reply(c, "220 2.0.0 Ready to start TLS\r\n") < 0 ||
                flush_out(c) < 0)
                return;
            c->ssl = wolfSSL_new(tls_ctx);
            if (c->ssl == NULL || wolfSSL_set_fd(c->ssl, c->fd) != WOLFSSL_SUCCESS ||
                wolfSSL_accept(c->ssl) != WOLFSSL_SUCCESS)
                return;
            continue;
        } else if (is_cmd(l, len, "RSET") || is_cmd(l, len, "NOOP")) {
            rc = reply(c, "250 2.0.0 Ok\r\n");
        } else if (is_cmd(l, len, "QUIT")) {
            reply(c, "221 2.0.0 Bye\r\n");
            flush_out(c);
            return;
        } else {
            rc = reply(c, "502 5.5.2 Error: command not recognized\r\n");
        }
        consume(c, used);
        if (rc < 0)
            return;
    }
}

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    session(c);
    if (c->ssl != NULL) {
        wolfSSL_shutdown(c->ssl);
        wolfSSL_free(c->ssl);
    }
    close(c->fd);
    free(c);
    return NULL;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_sink [-c CHAIN -k KEY] [-h HOSTNAME] [-e STEP] ADDR:PORT\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *chain = NULL, *key = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "c:k:h:e:")) != -1) {
        switch (opt) {
        case 'c':
            chain = optarg;
            break;
        case 'k':
            key = optarg;
            break;
        case 'h':
            hostname = optarg;
            break;
        case 'e':
            step = strtoul(optarg, NULL, 10);
            if (step == 0)
                usage();
            break;
        default:
            usage();
        }
    }
    if (optind != argc - 1 || (chain == NULL) != (key == NULL))
        usage();
    char addr[64];
    const char *colon = strrchr(argv[optind], ':');
    if (colon == NULL || (size_t)(colon - argv[optind]) >= sizeof addr)
        usage();
    memcpy(addr, argv[optind], (size_t)(colon - argv[optind]));
    addr[colon - argv[optind]] = '\0';
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)strtoul(colon + 1, NULL, 10))};
    if (inet_pton(AF_INET, addr, &sin.sin_addr) != 1)
        usage();

    signal(SIGPIPE, SIG_IGN);
    if (chain != NULL) {
        wolfSSL_Init();
        tls_ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
        if (tls_ctx == NULL ||
            wolfSSL_CTX_use_certificate_chain_file(tls_ctx, chain) != WOLFSSL_SUCCESS ||
            wolfSSL_CTX_use_PrivateKey_file(tls_ctx, key, WOLFSSL_FILETYPE_PEM) !=
                WOLFSSL_SUCCESS) {
            fprintf(stderr, "bench_sink: cannot load %s / %s\n", chain, key);
            return 1;
        }
        /* The client's cipher order decides, as with Postfix's smtpd
         * (tls_preempt_cipherlist = no) and OpenSSL servers by default. */
        wolfSSL_CTX_UseClientSuites(tls_ctx);
    }
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(ls, 512) < 0) {
        perror("bench_sink: listen");
        return 1;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE)
                continue;
            perror("bench_sink: accept");
            return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct timeval tv = {.tv_sec = 300};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        struct conn *c = calloc(1, sizeof *c);
        pthread_t t;
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        if (pthread_create(&t, &attr, conn_main, c) != 0) {
            close(fd);
            free(c);
        }
    }
}
