/*
 * params.h - THE table of Convoy's configuration parameters.
 *
 * Every parameter exists here and nowhere else: this table drives parsing,
 * validation, the fields of struct conf, `convoyctl config show` and the
 * generated reference (docs/convoy.conf.5.md, `convoyctl config doc`).
 *
 * CONF_PARAM(name, type, default, check, description)
 *   type:  STR, BOOL, INT, TIME (seconds; units s m h d w), SIZE (bytes;
 *          units k M G), LIST (comma/space separated), ENUM (one of check)
 *   check: INT/TIME/SIZE "min..max" ("" = any non-negative);
 *          ENUM the choices separated by spaces;
 *          STR/LIST the kind of each value: "hostname", "path", "facility",
 *          "relayhost", "listen" (host:port; empty allowed), "hostport" (host[:port]),
 *          "user" (an existing user that is not root),
 *          "cidr", "" (free text).
 *
 * Postfix names are reused where the meaning is the same; new parameters
 * carry a prefix naming their area (sts_*, tlsrpt_*, dns_*, daemon_*, queue_*).
 * Keep the table grouped by area; the reference is printed in this order.
 */
#ifndef CONVOY_CONF_PARAMS_H
#define CONVOY_CONF_PARAMS_H

#define CONF_PARAMS(P)                                                                             \
    /* --- identity and logging --- */                                                             \
    P(myhostname, STR, "", "hostname",                                                             \
      "Fully qualified name of this host, used in the SMTP banner, HELO/EHLO and Received: "       \
      "headers; empty means the system host name")                                                 \
    P(syslog_name, STR, "convoy", "",                                                              \
      "Name that starts every log tag, as in \"convoy/smtpd[pid]:\"")                              \
    P(syslog_facility, STR, "mail", "facility", "Syslog facility for log lines")                   \
    P(daemon_shutdown_timeout, TIME, "30s", "0..1h",                                               \
      "On SIGTERM or SIGINT, how long in-flight sessions and deliveries may take to finish "       \
      "before convoyd exits")                                                                      \
    P(mail_owner, STR, "", "user",                                                                 \
      "User that convoyd runs as once, started as root, it has bound its listeners and opened "    \
      "its state (it takes that user's groups, and the state directory is given to it); empty "    \
      "means no change of user. Must exist and must not be root")                                  \
    P(metrics_listen, STR, "", "listen",                                                           \
      "Address and port of the Prometheus metrics endpoint (GET /metrics, plain HTTP): "           \
      "127.0.0.1:9125, [::1]:9125; empty means none")                                              \
    /* --- queue --- */                                                                            \
    P(queue_directory, STR, "./var", "path",                                                       \
      "Directory that holds the queue database, the policy cache and the control socket; a "       \
      "relative path is taken from the directory convoyd and convoyctl start in")                  \
    P(message_size_limit, SIZE, "50M", "1k..2G",                                                   \
      "Largest message accepted, in bytes (advertised with the SIZE extension)")                   \
    P(maximal_queue_lifetime, TIME, "5d", "0..100d",                                               \
      "How long a recipient may stay deferred before it is returned to the sender as "             \
      "undeliverable")                                                                             \
    P(bounce_queue_lifetime, TIME, "5d", "0..100d",                                                \
      "How long a delivery status notification (bounce) may stay deferred before it is "           \
      "discarded")                                                                                 \
    P(delay_warning_time, TIME, "0", "0..100d",                                                    \
      "How long a recipient may stay deferred (counted from the message's arrival) before the "    \
      "sender gets one \"delayed\" delivery status notification (RFC 3464) for the message; 0 "    \
      "means never. Recipients with NOTIFY=DELAY, or with no NOTIFY, are reported; none goes to "  \
      "the null sender")                                                                           \
    P(minimal_backoff_time, TIME, "300s", "1s..1d",                                                \
      "Least time between two delivery attempts of a deferred recipient")                          \
    P(maximal_backoff_time, TIME, "4000s", "1s..7d",                                               \
      "Most time between two delivery attempts of a deferred recipient")                           \
    /* --- SMTP server (submission) --- */                                                         \
    P(smtpd_listen, LIST, "127.0.0.1:2525", "listen",                                              \
      "Addresses and ports the SMTP server listens on, each with an optional role: "               \
      "127.0.0.1:25 or 127.0.0.1:25/smtp (relay for mynetworks or after AUTH, STARTTLS "           \
      "offered), [::]:587/submission (RFC 6409: AUTH required before MAIL from every client, "     \
      "offered only after STARTTLS), 0.0.0.0:465/submissions (RFC 8314: TLS from the first byte, " \
      "AUTH required); *:25 means every IPv4 and IPv6 address. submission and submissions need "   \
      "smtpd_tls_cert_file and smtpd_auth_file. Changes apply on reload: new addresses are "       \
      "opened, removed ones closed (their sessions finish), the others kept")                      \
    P(mynetworks, LIST, "127.0.0.0/8 [::1]/128", "cidr",                                           \
      "Client networks that may relay without authentication")                                     \
    P(smtpd_banner, STR, "ESMTP Convoy", "",                                                       \
      "Text of the 220 greeting after the host name (myhostname is always sent first, as RFC "     \
      "5321 4.3.1 asks)")                                                                          \
    P(smtpd_recipient_limit, INT, "1000", "100..100000",                                           \
      "Most recipients accepted in one message; further RCPT commands get 452 4.5.3")              \
    P(smtpd_timeout, TIME, "300s", "1s..1h",                                                       \
      "Time a client may take to send a command (or to finish the TLS handshake) before it is "    \
      "disconnected with 421 4.4.2")                                                               \
    P(smtpd_data_timeout, TIME, "10m", "1s..1d",                                                   \
      "Time a client may take to send the whole message after DATA (or one BDAT chunk); slow "     \
      "clients are disconnected with 421 4.4.2")                                                   \
    P(smtpd_hard_error_limit, INT, "20", "1..1000",                                                \
      "Errors (4xx and 5xx replies) in one session before it is ended with 421 4.7.0")             \
    P(smtpd_session_limit, INT, "100", "1..100000",                                                \
      "Most SMTP sessions at once; more get 421 4.7.0 and are disconnected")                       \
    P(smtpd_client_connection_count_limit, INT, "50", "1..100000",                                 \
      "Most SMTP sessions at once from one client address; clients in mynetworks are exempt "      \
      "(as with Postfix's smtpd_client_event_limit_exceptions)")                                   \
    P(smtpd_forbid_bare_newline, ENUM, "reject", "reject normalize",                               \
      "What a bare <CR> or <LF> in commands or message data gets: reject (521 5.5.2 and "          \
      "disconnect) or normalize (read as <CR><LF>, never as part of an end of data)")              \
    P(smtpd_reject_long_lines, BOOL, "no", "",                                                     \
      "Refuse a message with a line longer than 998 octets (554 5.6.0) instead of folding the "    \
      "line at acceptance with <CR><LF><SPACE> as Postfix's smtp_line_length_limit does")          \
    P(hopcount_limit, INT, "50", "1..1000",                                                        \
      "Most Received: header fields a message may carry once accepted (the one Convoy adds "       \
      "included); a message with more is refused with 554 5.4.6 Too many hops, as a mail loop")    \
    P(postmaster_address, STR, "", "",                                                             \
      "Address that RCPT TO:<postmaster> (no domain; RFC 5321 4.5.1) is delivered to; empty "      \
      "means postmaster@ the domain of myhostname (myhostname, or the system host name, minus "    \
      "its first label when that leaves at least two labels)")                                     \
    P(smtpd_tls_cert_file, STR, "", "path",                                                        \
      "PEM certificate chain (leaf first) for STARTTLS; empty means no STARTTLS")                  \
    P(smtpd_tls_key_file, STR, "", "path",                                                         \
      "PEM private key of smtpd_tls_cert_file; empty means the key is in the certificate file")    \
    P(smtpd_auth_file, STR, "", "path",                                                            \
      "File of \"user:hash\" lines (crypt(3) hashes: yescrypt, SHA-512-crypt, ...) for AUTH "      \
      "PLAIN and LOGIN, offered only after STARTTLS; empty means no AUTH")                         \
    P(smtpd_sender_login_maps, STR, "", "path",                                                    \
      "Which senders an authenticated client may use, lines \"address-or-@domain "                 \
      "login[,login...]\"; a sender not mapped to the client's login gets 553 5.7.1 at MAIL "      \
      "FROM; unauthenticated clients are not affected; empty means no check")                      \
    /* --- delivery --- */                                                                         \
    P(relayhost, STR, "", "relayhost",                                                             \
      "Send all mail through this host instead of MX lookups: host, host:port, or [host]:port "    \
      "(brackets: no MX lookup); empty means deliver directly")                                    \
    P(smtp_helo_name, STR, "", "hostname",                                                         \
      "Name sent in EHLO/HELO when delivering; empty means myhostname")                            \
    P(smtp_connect_timeout, TIME, "30s", "1s..10m", "Time allowed to open a TCP connection")       \
    P(default_destination_concurrency_limit, INT, "20", "1..1000",                                 \
      "Most concurrent delivery connections to one destination domain")                            \
    P(default_destination_recipient_limit, INT, "50", "1..1000",                                   \
      "Most recipients in one delivery transaction")                                               \
    P(initial_destination_concurrency, INT, "5", "1..1000",                                        \
      "Delivery connections a destination starts with; one more is allowed after each "            \
      "successful delivery, up to default_destination_concurrency_limit (or the destination's "    \
      "destination_limits concurrency), and one fewer after each attempt in which no address "     \
      "could be reached (as Postfix's qmgr)")                                                      \
    P(smtp_destination_dead_threshold, INT, "3", "1..1000",                                        \
      "Consecutive delivery attempts to a destination in which no address gave a usable session "  \
      "(connection refused or timed out, greeting or EHLO refused) after which the destination "   \
      "is marked dead: its mail is deferred without connecting until "                             \
      "smtp_destination_dead_time has passed, then one probe connection at a time tests it")       \
    P(smtp_destination_dead_time, TIME, "300s", "1s..1d",                                          \
      "How long a dead destination is left alone before the next probe (Postfix uses "             \
      "minimal_backoff_time for this)")                                                            \
    P(transport_maps, STR, "", "path",                                                             \
      "Per-domain routing in a subset of Postfix transport(5) syntax: \"example.net "              \
      "smtp:[host]:port\", \".example.net smtp:host\" (subdomains), \"example.org "                \
      "relay:[host]\", "                                                                           \
      "\"bad.test error:5.1.1 text\" (bounce at once), \"slow.test defer:4.3.0 text\", \"* "       \
      "smtp:[host]\" (default); exact name, then parent domains, then *. A matched entry wins "    \
      "over relayhost; MTA-STS and DANE do not apply to another next hop; empty means none")       \
    P(destination_limits, STR, "", "path",                                                         \
      "Per-destination limits, lines \"domain concurrency=N rate=N/s recipients=N\" (any of "      \
      "the three; rate also N/m, N/h): a cap on connections, a message rate and recipients per "   \
      "transaction; keys as transport_maps (without *); empty means none")                         \
    /* --- scale-out --- */                                                                        \
    P(shared_state, STR, "", "",                                                                   \
      "Redis that several convoyd share (docs/scale-out.md): redis://[[USER]:PASSWORD@]HOST:PORT"  \
      "[/DB], rediss://... (the same over TLS, verified for HOST with shared_state_tls_CAfile) "   \
      "or unix:/path[?db=N]; destination_limits rates become fleet-wide token buckets, "           \
      "concurrency limits fleet-wide connection leases, MTA-STS policies fetched by one node are " \
      "read by the others. Empty means one node, everything local")                                \
    P(shared_state_tls_CAfile, STR, "", "path",                                                    \
      "PEM file of trusted root certificates for rediss:// shared_state (the Redis server's "      \
      "certificate must chain to one and name the URL's HOST); empty means the system trust "      \
      "store")                                                                                     \
    P(shared_state_node, STR, "", "",                                                              \
      "Name of this node in the fleet (shared_state); empty means myhostname")                     \
    P(shared_state_fallback_share, STR, "", "",                                                    \
      "Share of each fleet-wide limit this node uses while shared_state is away or slow, a "       \
      "fraction (0.25) or 1/N; empty means 1/N of the fleet size last seen")                       \
    P(smtp_sasl_auth_enable, BOOL, "no", "",                                                       \
      "Log in to the next hop (a smart host) with SMTP AUTH (RFC 4954: PLAIN, or LOGIN when "      \
      "PLAIN is not offered) using the credentials smtp_sasl_password_maps has for it")            \
    P(smtp_sasl_password_maps, STR, "", "path",                                                    \
      "File of \"[host]:port user:password\" lines (also \"host\" and \"[host]\" keys), as "       \
      "Postfix's; looked up by the next hop as written in relayhost, then by the remote host "     \
      "name. It must not be readable by others (mode 0600 or 0640). Read at start and on reload")  \
    P(smtp_sasl_tls_required, BOOL, "yes", "",                                                     \
      "Send credentials only over TLS: a session to a host with credentials that has no TLS is "   \
      "deferred with 4.7.0 and the password is never sent (as Postfix's "                          \
      "smtp_sasl_security_options = noplaintext)")                                                 \
    P(smtp_tls_CAfile, STR, "", "path",                                                            \
      "PEM file of trusted root certificates for verified TLS (MX hosts and MTA-STS policy "       \
      "hosts); empty means the system trust store")                                                \
    P(smtp_destination_port, INT, "25", "1..65535",                                                \
      "TCP port of MX hosts (and of relayhost when it names no port); 25 except in tests")         \
    P(smtp_tls_security_level, ENUM, "may", "none may verify dane dane-only",                      \
      "TLS when delivering: none; may (STARTTLS when offered, no certificate check, plaintext "    \
      "retry if the handshake fails); verify (STARTTLS required and the certificate must name "    \
      "the MX host); dane (RFC 7672: where the MX host has DNSSEC-secure TLSA records, "           \
      "STARTTLS is required and the certificate must match them; elsewhere as may, with "          \
      "MTA-STS where published; needs smtp_dns_support_level = dnssec, as in Postfix); "           \
      "dane-only (as dane, but hosts without secure TLSA records get no mail)")                    \
    P(smtp_mx_address_limit, INT, "5", "1..100",                                                   \
      "Most addresses (of all MX hosts together) tried in one delivery attempt")                   \
    P(smtp_connection_limit, INT, "100", "1..10000",                                               \
      "Most delivery connections open at once, over all destinations")                             \
    P(smtp_connection_reuse_count_limit, INT, "100", "1..100000",                                  \
      "Most messages carried by one delivery connection")                                          \
    P(smtp_connection_cache_time_limit, TIME, "2s", "1s..5m",                                      \
      "How long an idle delivery connection is kept for the next message to the same "             \
      "destination")                                                                               \
    P(smtp_helo_timeout, TIME, "300s", "1s..1h",                                                   \
      "Time allowed for the server greeting and the EHLO/HELO reply (RFC 5321 4.5.3.2.1)")         \
    P(smtp_starttls_timeout, TIME, "300s", "1s..1h",                                               \
      "Time allowed for the STARTTLS reply and the TLS handshake")                                 \
    P(smtp_mail_timeout, TIME, "300s", "1s..1h",                                                   \
      "Time allowed for the MAIL FROM reply (RFC 5321 4.5.3.2.2)")                                 \
    P(smtp_rcpt_timeout, TIME, "300s", "1s..1h",                                                   \
      "Time allowed for each RCPT TO reply (RFC 5321 4.5.3.2.3)")                                  \
    P(smtp_data_init_timeout, TIME, "120s", "1s..1h",                                              \
      "Time allowed for the DATA reply (RFC 5321 4.5.3.2.4)")                                      \
    P(smtp_data_xfer_timeout, TIME, "180s", "1s..1h",                                              \
      "Time allowed for each block of message content to be sent (RFC 5321 4.5.3.2.5)")            \
    P(smtp_data_done_timeout, TIME, "600s", "1s..1h",                                              \
      "Time allowed for the reply to the final dot (RFC 5321 4.5.3.2.6)")                          \
    P(smtp_rset_timeout, TIME, "20s", "1s..1h",                                                    \
      "Time allowed for the RSET reply before a reused connection takes the next message")         \
    P(smtp_quit_timeout, TIME, "300s", "1s..1h", "Time allowed for the QUIT reply")                \
    /* --- MTA-STS --- */                                                                          \
    P(sts_fetch_timeout, TIME, "60s", "1s..10m",                                                   \
      "Time allowed for one MTA-STS policy fetch, from connect to the last byte (RFC 8461 3.3)")   \
    P(sts_connect_timeout, TIME, "10s", "1s..5m",                                                  \
      "Time allowed to open the TCP connection to an MTA-STS policy host")                         \
    P(sts_max_policy_size, SIZE, "64k", "1k..1M",                                                  \
      "Largest MTA-STS policy file accepted, in bytes (RFC 8461 3.3 suggests 64 KB)")              \
    P(sts_policy_https_port, INT, "443", "1..65535",                                               \
      "HTTPS port of mta-sts.DOMAIN policy hosts; 443 except in tests")                            \
    P(sts_txt_check_interval, TIME, "5m", "0..1d",                                                 \
      "How long a cached MTA-STS policy is used without looking at its _mta-sts TXT record "       \
      "again; after that the record is checked in the background on the next delivery")            \
    P(sts_refresh_interval, TIME, "1d", "1h..30d",                                                 \
      "Cached MTA-STS policies are checked for a new id this often, and fetched again when "       \
      "they expire within this time, so they never lapse (RFC 8461 10.2)")                         \
    P(sts_fetch_retry_time, TIME, "5m", "5m..1d",                                                  \
      "Least time before a failed MTA-STS policy fetch is tried again for the same id (RFC "       \
      "8461 3.3: at least five minutes); also the least time between two refetches of a "          \
      "domain's unchanged policy id after an enforce policy deferred its mail (RFC 8461 5)")       \
    P(tls_policy_file, STR, "", "path",                                                            \
      "Per-domain TLS overrides that apply before MTA-STS, in Postfix smtp_tls_policy_maps "       \
      "text syntax: \"example.com secure match=mx.example.com\", \"example.net may\", "            \
      "\"example.org encrypt\", \"example.com none\"; empty means none")                           \
    /* --- TLS reporting --- */                                                                    \
    P(tlsrpt_enable, BOOL, "no", "",                                                               \
      "Record the TLS outcome of delivery sessions per recipient domain and send daily "           \
      "aggregate reports to domains that publish a _smtp._tls TXT record (RFC 8460)")              \
    P(tlsrpt_organization_name, STR, "", "",                                                       \
      "organization-name of TLS reports; empty means tlsrpt_submitter")                            \
    P(tlsrpt_contact_info, STR, "", "",                                                            \
      "contact-info of TLS reports, an email address; empty means tlsrpt_sender")                  \
    P(tlsrpt_submitter, STR, "", "hostname",                                                       \
      "Domain that sends TLS reports: in the report-id, the file name, the Subject and "           \
      "TLS-Report-Submitter, and the DKIM signing domain of mailed reports; empty means "          \
      "myhostname")                                                                                \
    P(tlsrpt_sender, STR, "", "",                                                                  \
      "From address of mailed TLS reports; empty means noreply-tlsrpt@ followed by "               \
      "tlsrpt_submitter")                                                                          \
    /* --- DKIM --- */                                                                             \
    P(dkim_key_table, STR, "", "path",                                                             \
      "Keys to sign accepted mail with (RFC 6376, RFC 8463): lines \"DOMAIN SELECTOR KEYFILE\", "  \
      "KEYFILE a PEM private key (RSA of at least 1024 bits, or Ed25519) readable only by its "    \
      "owner; a message is signed with every key whose DOMAIN is its From domain; empty means "    \
      "no signing")                                                                                \
    P(dkim_signed_headers, LIST,                                                                   \
      "From To Cc Subject Date Message-ID In-Reply-To References MIME-Version Content-Type "       \
      "Content-Transfer-Encoding Reply-To List-Unsubscribe List-Unsubscribe-Post Sender",          \
      "",                                                                                          \
      "Header fields a DKIM signature covers, each as often as it occurs; From is always "         \
      "signed, once more than it occurs, so that no From can be added")                            \
    /* --- DNS --- */                                                                              \
    P(dns_servers, LIST, "", "hostport",                                                           \
      "DNS resolvers to ask, with optional ports: 127.0.0.1:5353, [::1]:53; empty means "          \
      "/etc/resolv.conf")                                                                          \
    P(dns_timeout, TIME, "5s", "1s..1m", "Time to wait for one DNS answer before trying again")    \
    P(dns_tries, INT, "3", "1..10", "How many times a DNS query is sent before it fails")          \
    P(smtp_dns_support_level, ENUM, "enabled", "disabled enabled dnssec",                          \
      "DNS use when delivering, as in Postfix: enabled (plain DNS; no DNSSEC status); dnssec "     \
      "(queries ask for DNSSEC status with the AD and DO bits, and an answer counts as secure "    \
      "when its AD bit comes from a resolver listed in dns_validating_servers - needed by "        \
      "smtp_tls_security_level = dane); disabled (no DNS lookups: not supported by Convoy yet, "   \
      "convoyd refuses it)")                                                                       \
    P(dns_validating_servers, LIST, "127.0.0.0/8 [::1]/128", "cidr",                               \
      "Networks of the DNS resolvers (dns_servers, or /etc/resolv.conf) that validate DNSSEC "     \
      "themselves and whose AD bit Convoy believes with smtp_dns_support_level = dnssec; unless "  \
      "every resolver in use is inside them no answer counts as secure (a warning says so). "      \
      "Loopback by default, as Postfix expects a local validating resolver")

#endif
