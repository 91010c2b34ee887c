/* sendframes IFNAME COUNT SIZE: send COUNT raw Ethernet frames of SIZE bytes
 * (EtherType 0x88B5, IEEE 802 local experimental) on IFNAME through an
 * AF_PACKET socket.  Built static for the test guest, whose busybox has no
 * such tool.  Exits non-zero unless every frame was sent whole. */
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    struct sockaddr_ll to = {0};
    unsigned char frame[9000] = {0};
    long count, size, i;
    int fd;

    if (argc != 4) {
        fprintf(stderr, "usage: sendframes IFNAME COUNT SIZE\n");
        return 2;
    }
    count = strtol(argv[2], NULL, 10);
    size = strtol(argv[3], NULL, 10);
    if (count < 0 || size < 60 || size > (long)sizeof(frame)) {
        fprintf(stderr, "sendframes: bad count or size\n");
        return 2;
    }
    fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    to.sll_family = AF_PACKET;
    to.sll_ifindex = (int)if_nametoindex(argv[1]);
    to.sll_halen = ETH_ALEN;
    memset(to.sll_addr, 0xff, ETH_ALEN);
    memset(frame, 0xff, 6);                      /* broadcast */
    memcpy(frame + 6, "\x02\x00\x00\x00\x00\x02", 6);
    frame[12] = 0x88;
    frame[13] = 0xb5;
    for (i = 0; i < count; i++)
        if (sendto(fd, frame, (size_t)size, 0, (struct sockaddr *)&to,
                   sizeof(to)) != size) {
            perror("sendto");
            return 1;
        }
    printf("sent %ld frames of %ld bytes\n", count, size);
    return 0;
}
