/* Message framing over a byte buffer, as Erlang's {packet, N}: pure
 * decoders and encoders with no libuv and no Lua in them.
 *
 *   raw      no framing: a message is whatever bytes are there
 *   1, 2, 4  a big-endian unsigned length header of that many bytes, then
 *            that many bytes of payload (the header is not returned)
 *   line     a message ends at '\n' and is returned with its line ending
 *
 * A message longer than `max` bytes (the payload for 1/2/4, the line with
 * its '\n' for line mode) is an error, found as soon as the header or the
 * first `max` bytes show it, so a decoder never needs more than `max` bytes
 * plus a header buffered.
 */
#ifndef LUAECHO_FRAMING_H
#define LUAECHO_FRAMING_H

#include <stddef.h>

typedef enum {
  LE_PACKET_RAW = 0,
  LE_PACKET_1 = 1,
  LE_PACKET_2 = 2,
  LE_PACKET_4 = 4,
  LE_PACKET_LINE = 5
} le_packet;

typedef enum {
  LE_FRAME_OK,    /* a whole message is at the front */
  LE_FRAME_MORE,  /* not yet: more bytes are needed */
  LE_FRAME_TOOBIG /* the message exceeds max: a protocol error */
} le_frame_status;

/* A decoded message: payload bytes [off, off + len) of the input, and how
 * many input bytes the whole frame used. */
typedef struct le_frame {
  size_t off;
  size_t len;
  size_t used;
} le_frame;

/* Looks for one whole message at the front of data[0..n) (data may be NULL
 * when n is 0). `scanned` is for line mode: how many bytes earlier calls
 * already found free of '\n' (pass 0, or the previous value while only
 * appending); it grows on LE_FRAME_MORE so a long line is scanned once, and
 * goes back to 0 when a message is found, ready for the bytes after it.
 * Raw mode returns every byte (n > 0) and ignores max. */
le_frame_status le_frame_decode(le_packet mode, size_t max, const char *data,
                                size_t n, size_t *scanned, le_frame *out);

/* Writes the header for a `len`-byte payload into hdr (at least 4 bytes)
 * and returns its size: 0 for raw and line modes, or -1 when len does not
 * fit in the header. */
int le_frame_header(le_packet mode, size_t len, unsigned char *hdr);

/* Parses a packet mode as written in config and setopts: "raw", 0, 1, 2,
 * 4 or "line" (text is NULL for a number). Returns 0 or -1. */
int le_packet_parse(const char *text, long number, le_packet *out);

/* Returns the mode as users write it: "raw", "line", or "1"/"2"/"4". */
const char *le_packet_name(le_packet mode);

#endif
