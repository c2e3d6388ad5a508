/* The in-kernel half of the sockmap relay experiment (see run.sh): every
 * socket of a proxied pair sits in sock_hash under its own cookie, and peer
 * maps a cookie to the other socket's. Bytes that reach one socket are
 * handed to the other's send path without waking the proxy. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, __u64);
} sock_hash SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, __u64);
} peer SEC(".maps");

SEC("sk_skb/stream_verdict")
int verdict(struct __sk_buff *skb)
{
    __u64 cookie = bpf_get_socket_cookie(skb);
    __u64 *other = bpf_map_lookup_elem(&peer, &cookie);

    if (!other)
        return SK_PASS;
    return bpf_sk_redirect_hash(skb, &sock_hash, other, 0);
}

char LICENSE[] SEC("license") = "GPL";
