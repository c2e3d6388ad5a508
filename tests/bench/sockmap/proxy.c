/* A minimal TCP proxy that relays through a BPF sockmap instead of user
 * space: the experiment behind "Tried and not kept: relaying in the kernel"
 * in docs/performance.md. Not part of lbd. It connects to each backend
 * with a blocking connect and closes both sides at the first EOF, which is
 * enough for kept-alive and bulk traffic, not for half-close.
 *
 *   proxy VERDICT.o PORT BACKEND_PORT... (all on 127.0.0.1) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 65536

static int hash_fd, peer_fd;
static int peer_of[MAX_FD];
static uint64_t cookie_of[MAX_FD];

static uint64_t socket_cookie(int fd)
{
    uint64_t cookie = 0;
    socklen_t len = sizeof(cookie);

    getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len);
    return cookie;
}

static int pair_up(int ep, int client, int backend)
{
    int fds[2] = {client, backend};

    for (int i = 0; i < 2; i++) {
        peer_of[fds[i]] = fds[1 - i];
        cookie_of[fds[i]] = socket_cookie(fds[i]);
    }
    for (int i = 0; i < 2; i++) {
        uint64_t fd = (uint64_t)fds[i];

        if (bpf_map_update_elem(peer_fd, &cookie_of[fds[i]], &cookie_of[fds[1 - i]], BPF_ANY) ||
            bpf_map_update_elem(hash_fd, &cookie_of[fds[i]], &fd, BPF_ANY))
            return -1;
    }
    for (int i = 0; i < 2; i++) {
        struct epoll_event ev = {.events = EPOLLRDHUP, .data.fd = fds[i]};

        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    return 0;
}

static void unpair(int fd)
{
    int other = peer_of[fd];
    char buf[65536];
    ssize_t n;

    /* What reached the socket before it joined the map is ours to pass. */
    while ((n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0)
        send(other, buf, (size_t)n, MSG_NOSIGNAL);
    bpf_map_delete_elem(peer_fd, &cookie_of[fd]);
    bpf_map_delete_elem(peer_fd, &cookie_of[other]);
    close(fd);
    close(other);
}

int main(int argc, char **argv)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct epoll_event events[64];
    int one = 1, next = 0;

    if (argc < 4) {
        fprintf(stderr, "usage: proxy VERDICT.o PORT BACKEND_PORT...\n");
        return 2;
    }
    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    if (!obj || bpf_object__load(obj)) {
        perror("proxy: loading the BPF object");
        return 1;
    }
    hash_fd = bpf_map__fd(bpf_object__find_map_by_name(obj, "sock_hash"));
    peer_fd = bpf_map__fd(bpf_object__find_map_by_name(obj, "peer"));
    int prog = bpf_program__fd(bpf_object__find_program_by_name(obj, "verdict"));
    if (bpf_prog_attach(prog, hash_fd, BPF_SK_SKB_STREAM_VERDICT, 0)) {
        perror("proxy: attaching the verdict");
        return 1;
    }

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    addr.sin_port = htons((uint16_t)atoi(argv[2]));
    if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) || listen(lfd, 1024)) {
        perror("proxy: listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);

    for (;;) {
        int n = epoll_wait(ep, events, 64, -1);

        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd, client;

            if (fd != lfd) {
                unpair(fd);
                continue;
            }
            while ((client = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                struct sockaddr_in to = addr;
                int backend = socket(AF_INET, SOCK_STREAM, 0);

                to.sin_port = htons((uint16_t)atoi(argv[3 + next++ % (argc - 3)]));
                setsockopt(backend, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                if (client >= MAX_FD || backend >= MAX_FD ||
                    connect(backend, (struct sockaddr *)&to, sizeof(to)) ||
                    pair_up(ep, client, backend)) {
                    close(client);
                    close(backend);
                }
            }
        }
    }
}
