/*
 * bind-localhost.c - LD_PRELOAD shim that keeps test peers on loopback.
 *
 * Debian 12's Orthanc 1.10 and dcmtk's storescp cannot be told which address to listen
 * on: they bind the wildcard address and so listen on every interface. Started with
 *
 *     LD_PRELOAD=.peers/lib/bind-localhost.so Orthanc orthanc.json
 *
 * every bind() they make to an address outside loopback is rewritten, port unchanged:
 *
 *   AF_INET  x.x.x.x (not 127/8)          -> 127.0.0.1
 *   AF_INET6 ::ffff:x.x.x.x (not 127/8)   -> ::ffff:127.0.0.1
 *   AF_INET6 :: on a dual-stack socket    -> ::ffff:127.0.0.1  (IPv4 clients on 127.0.0.1
 *                                                               keep working)
 *   AF_INET6 anything else not ::1        -> ::1
 *
 * Other families (AF_UNIX, ...) pass through untouched. BIND_LOCALHOST_DEBUG=1 in the
 * environment logs each rewrite to stderr.
 *
 * Built by tools/install-peers.sh:
 *     gcc -shared -fPIC -O2 -Wall -o .peers/lib/bind-localhost.so tools/bind-localhost.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*real_bind_t)(int, const struct sockaddr *, socklen_t);

static real_bind_t real_bind_fn(void) {
  static real_bind_t fn;
  if (fn == NULL) fn = (real_bind_t)dlsym(RTLD_NEXT, "bind");
  return fn;
}

static int debug_on(void) {
  const char *v = getenv("BIND_LOCALHOST_DEBUG");
  return v != NULL && *v != '\0' && strcmp(v, "0") != 0;
}

static int is_v4_loopback(in_addr_t net_order) { return (ntohl(net_order) >> 24) == 127; }

static void log_rewrite(int fd, const char *to, unsigned port) {
  if (debug_on()) fprintf(stderr, "bind-localhost: fd %d port %u -> %s\n", fd, port, to);
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
  real_bind_t real = real_bind_fn();
  if (real == NULL) {
    errno = ENOSYS;
    return -1;
  }
  if (addr == NULL) return real(fd, addr, len);

  if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
    struct sockaddr_in in4;
    memcpy(&in4, addr, sizeof in4);
    if (!is_v4_loopback(in4.sin_addr.s_addr)) {
      in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      log_rewrite(fd, "127.0.0.1", ntohs(in4.sin_port));
    }
    return real(fd, (const struct sockaddr *)&in4, sizeof in4);
  }

  if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    struct sockaddr_in6 in6;
    memcpy(&in6, addr, sizeof in6);
    if (IN6_IS_ADDR_LOOPBACK(&in6.sin6_addr)) return real(fd, (const struct sockaddr *)&in6, sizeof in6);

    int to_mapped = 0;
    if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) {
      in_addr_t v4;
      memcpy(&v4, &in6.sin6_addr.s6_addr[12], sizeof v4);
      if (is_v4_loopback(v4)) return real(fd, (const struct sockaddr *)&in6, sizeof in6);
      to_mapped = 1;
    } else if (IN6_IS_ADDR_UNSPECIFIED(&in6.sin6_addr)) {
      int v6only = 0;
      socklen_t optlen = sizeof v6only;
      if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &optlen) == 0 && !v6only) to_mapped = 1;
    }
    if (to_mapped) {
      static const unsigned char mapped_lo[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1};
      memcpy(in6.sin6_addr.s6_addr, mapped_lo, sizeof mapped_lo);
      log_rewrite(fd, "::ffff:127.0.0.1", ntohs(in6.sin6_port));
    } else {
      in6.sin6_addr = in6addr_loopback;
      in6.sin6_scope_id = 0;
      log_rewrite(fd, "::1", ntohs(in6.sin6_port));
    }
    return real(fd, (const struct sockaddr *)&in6, sizeof in6);
  }

  return real(fd, addr, len);
}
