// The simulated device: the generated top level (Verilator) behind a localhost TCP port.
//
// (Verilator escapes the double underscore of Amaranth port names as ___05F.)
// Bytes the host sends become the top's `rx` stream, one per cycle when it is ready; bytes
// on `tx` go back to the host. The device keeps its state across connections, like a board
// that stays powered, and it only runs while a client is connected.
//
// Usage: spikellm_sim [--idle-timeout SECONDS] [PORT]   (PORT 0 or none picks a free port)
// It prints "listening PORT" on stdout once it accepts connections.
//
// Who is served (docs/host.md, "Who may connect to the simulated device"):
// - 127.0.0.1 only; one client at a time, the others wait in the listen backlog
//   (SOMAXCONN), so a connect never waits for a SYN retransmission.
// - A client that moves no byte in either direction for SECONDS (default 30; 0: never) is
//   disconnected so that the next one can be served. Not counted as idle: time while the
//   top is still working on what it was sent, i.e. received bytes wait for it, it is
//   sending an answer, or it has taken a byte since it last sent one and holds rx.ready
//   low (a long RUN).
// - Received bytes wait in a fixed RX_CAP-byte ring; when it is full the harness stops
//   reading the socket, the kernel's buffers fill and TCP flow control holds the client
//   back. Nothing is dropped. Answers that the client does not read stall the simulation
//   (as a board's transmitter would), and count as idle time.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <vector>

#include "Vspikellm_top.h"
#include "verilated.h"

static Vspikellm_top* top;

// Bytes held between the socket and the top's rx stream (a power of two).
static constexpr size_t RX_CAP = 1 << 16;
// An answer goes out at the latest once this many of its bytes are collected.
static constexpr size_t TX_BATCH = 4096;
// Cycles without an answer byte after which what the top sent so far goes out.
static constexpr uint64_t TX_GAP = 16;
// Cycles without a byte either way after which an idle top is slowed to save the CPU.
static constexpr uint64_t QUIET_CYCLES = 2000000;

// The received bytes the top has not taken yet: a fixed ring.
struct Ring {
    std::vector<uint8_t> buf = std::vector<uint8_t>(RX_CAP);
    size_t head = 0, size = 0;
    bool empty() const { return size == 0; }
    bool full() const { return size == RX_CAP; }
    uint8_t front() const { return buf[head]; }
    void pop() {
        head = (head + 1) & (RX_CAP - 1);
        size--;
    }
    void clear() { head = size = 0; }
    // receive into the free space, without blocking: recv's result
    ssize_t recv_from(int fd) {
        if (full()) {
            errno = EAGAIN;
            return -1;
        }
        if (size == 0) head = 0;  // one contiguous free span
        size_t tail = (head + size) & (RX_CAP - 1);
        size_t first = tail >= head ? RX_CAP - tail : head - tail;
        if (first > RX_CAP - size) first = RX_CAP - size;
        iovec iov[2] = {{buf.data() + tail, first}, {buf.data(), RX_CAP - size - first}};
        msghdr msg{};
        msg.msg_iov = iov;
        msg.msg_iovlen = iov[1].iov_len ? 2 : 1;
        ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT);
        if (n > 0) size += n;
        return n;
    }
};

static double now_s() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// Whether the top has taken a byte since it last sent one (it owes an answer).
static bool owed = false;

static void tick(Ring& in, std::vector<uint8_t>& out) {
    top->rx___05Fvalid = !in.empty();
    top->rx___05Fpayload = in.empty() ? 0 : in.front();
    top->tx___05Fready = 1;
    top->clk = 0;
    top->eval();
    bool rx_fire = top->rx___05Fvalid && top->rx___05Fready;
    bool tx_fire = top->tx___05Fvalid;
    uint8_t txb = top->tx___05Fpayload;
    top->clk = 1;
    top->eval();
    if (rx_fire) {
        in.pop();
        owed = true;
    }
    if (tx_fire) {
        out.push_back(txb);
        owed = false;
    }
}

// Send all of `out`. While the socket takes nothing, wait (the simulation pauses); false if
// the client is gone or took no byte for idle_s seconds since `last` (a byte moved).
static bool send_all(int fd, std::vector<uint8_t>& out, double& last, double idle_s) {
    size_t off = 0;
    while (off < out.size()) {
        ssize_t n = send(fd, out.data() + off, out.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            off += n;
            last = now_s();
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return false;
        int wait = -1;
        if (idle_s > 0) {
            double left = last + idle_s - now_s();
            if (left <= 0) return false;
            wait = (int)(left * 1000) + 1;
        }
        pollfd p{fd, POLLOUT, 0};
        if (poll(&p, 1, wait) < 0 && errno != EINTR) return false;
        if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) return false;
    }
    out.clear();
    return true;
}

static void usage() {
    fprintf(stderr, "usage: spikellm_sim [--idle-timeout SECONDS] [PORT]\n");
    exit(2);
}

int main(int argc, char** argv) {
    int port = 0;
    double idle_s = 30;
    for (int i = 1; i < argc; i++) {
        const char* a = argv[i];
        char* end = nullptr;
        if (!strcmp(a, "--idle-timeout") || !strncmp(a, "--idle-timeout=", 15)) {
            const char* v = a[14] == '=' ? a + 15 : (i + 1 < argc ? argv[++i] : nullptr);
            if (!v) usage();
            idle_s = strtod(v, &end);
            if (end == v || *end || idle_s < 0) usage();
        } else if (a[0] == '+') {
            // +verilator+... arguments, for Verilated::commandArgs
        } else {
            long p = strtol(a, &end, 10);
            if (end == a || *end || p < 0 || p > 65535) usage();
            port = (int)p;
        }
    }
    Verilated::commandArgs(argc, argv);
    top = new Vspikellm_top;
    Ring in;
    std::vector<uint8_t> out;
    out.reserve(2 * TX_BATCH);
    top->rst = 1;
    for (int i = 0; i < 8; i++) tick(in, out);
    top->rst = 0;
    out.clear();

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    if (bind(ls, (sockaddr*)&addr, sizeof addr) || listen(ls, SOMAXCONN)) {
        perror("spikellm_sim: bind/listen");
        return 2;
    }
    socklen_t len = sizeof addr;
    getsockname(ls, (sockaddr*)&addr, &len);
    printf("listening %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    for (;;) {
        int fd = accept(ls, nullptr, nullptr);
        if (fd < 0) continue;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        uint64_t cycle = 0, quiet = 0, tx_gap = 0;
        double last = now_s();  // when a byte last moved through the socket, either way
        bool open = true;
        while (open) {
            // look at the socket every 64 cycles while there is nothing to feed, every 4096
            // while feeding; after a long quiet spell, block up to 1 ms (saves the CPU)
            // unless the top is still working on what it was sent: bytes wait for it, it is
            // sending an answer, or it owes one and takes no bytes (a long RUN)
            if ((in.empty() && (cycle & 63) == 0) || (cycle & 4095) == 0) {
                bool working = !in.empty() || !out.empty() || (owed && !top->rx___05Fready);
                int wait = (in.empty() && quiet > QUIET_CYCLES && !working) ? 1 : 0;
                // a full ring is not read; POLLRDHUP still reports a client that left
                pollfd p{fd, (short)(POLLRDHUP | (in.full() ? 0 : POLLIN)), 0};
                if (poll(&p, 1, wait) > 0) {
                    if (p.revents & POLLIN) {
                        ssize_t n = in.recv_from(fd);
                        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;
                        if (n > 0) {
                            quiet = 0;
                            last = now_s();
                        }
                    } else if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {
                        break;
                    }
                }
                if (idle_s > 0) {
                    double t = now_s();
                    if (working) last = t;
                    else if (t - last > idle_s) break;
                }
            }
            size_t had = out.size();
            tick(in, out);
            cycle++;
            quiet++;
            if (!out.empty()) {
                if (out.size() != had) quiet = tx_gap = 0;
                else tx_gap++;
                // an answer goes out in one piece once the top pauses and nothing waits to
                // be fed, or every TX_BATCH bytes (not a send per byte)
                if ((in.empty() && tx_gap >= TX_GAP) || out.size() >= TX_BATCH)
                    open = send_all(fd, out, last, idle_s);
            }
        }
        close(fd);
        in.clear();
        out.clear();
        owed = false;
    }
}
