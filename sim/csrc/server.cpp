// The simulated device: the generated top level (Verilator) behind a localhost TCP port.
//
// (Verilator escapes the double underscore of Amaranth port names as ___05F.)
// Bytes the host sends become the top's `rx` stream, one per cycle when it is ready; bytes
// on `tx` go back to the host. The device keeps its state across connections, like a board
// that stays powered. Usage: spikellm_sim PORT (0 picks a free port); it prints
// "listening PORT" on stdout once it accepts connections.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <vector>

#include "Vspikellm_top.h"
#include "verilated.h"

static Vspikellm_top* top;

static void tick(std::deque<uint8_t>& in, std::vector<uint8_t>& out) {
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
    if (rx_fire) in.pop_front();
    if (tx_fire) out.push_back(txb);
}

static bool send_all(int fd, std::vector<uint8_t>& out) {
    size_t off = 0;
    while (off < out.size()) {
        ssize_t n = send(fd, out.data() + off, out.size() - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        off += n;
    }
    out.clear();
    return true;
}

int main(int argc, char** argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    Verilated::commandArgs(argc, argv);
    top = new Vspikellm_top;
    std::deque<uint8_t> in;
    std::vector<uint8_t> out;
    top->rst = 1;
    for (int i = 0; i < 8; i++) tick(in, out);
    top->rst = 0;

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    if (bind(ls, (sockaddr*)&addr, sizeof addr) || listen(ls, 1)) {
        perror("spikellm_sim: bind/listen");
        return 2;
    }
    socklen_t len = sizeof addr;
    getsockname(ls, (sockaddr*)&addr, &len);
    printf("listening %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    std::vector<uint8_t> buf(1 << 16);
    for (;;) {
        int fd = accept(ls, nullptr, nullptr);
        if (fd < 0) continue;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        uint64_t cycle = 0, quiet = 0;
        bool open = true;
        while (open) {
            // look at the socket every 64 cycles while there is nothing to feed, every 4096
            // while feeding; after a long quiet spell, block up to 1 ms (saves the CPU)
            if ((in.empty() && (cycle & 63) == 0) || (cycle & 4095) == 0) {
                pollfd p{fd, POLLIN, 0};
                int wait = (in.empty() && quiet > 2000000) ? 1 : 0;
                if (poll(&p, 1, wait) > 0) {
                    ssize_t n = recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
                    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                        open = false;
                        break;
                    }
                    if (n > 0) {
                        in.insert(in.end(), buf.begin(), buf.begin() + n);
                        quiet = 0;
                    }
                }
            }
            tick(in, out);
            cycle++;
            quiet++;
            if (!out.empty()) {
                quiet = 0;
                if (in.empty() || out.size() >= 4096) open = send_all(fd, out);
            }
        }
        close(fd);
        in.clear();
        out.clear();
    }
}
