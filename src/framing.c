/* Message framing: see include/luaecho/framing.h. */
#include "luaecho/framing.h"

#include <stdint.h>
#include <string.h>

static le_frame_status decode_length(size_t hlen, size_t max, const char *data,
                                     size_t n, le_frame *out) {
  if (n < hlen) return LE_FRAME_MORE;
  uint64_t len = 0;
  for (size_t i = 0; i < hlen; i++) len = (len << 8) | (unsigned char)data[i];
  if (len > max) return LE_FRAME_TOOBIG;
  if (n - hlen < len) return LE_FRAME_MORE;
  out->off = hlen;
  out->len = (size_t)len;
  out->used = hlen + (size_t)len;
  return LE_FRAME_OK;
}

static le_frame_status decode_line(size_t max, const char *data, size_t n,
                                   size_t *scanned, le_frame *out) {
  size_t from = scanned && *scanned <= n ? *scanned : 0;
  size_t limit = n < max ? n : max;
  const char *nl =
      from < limit ? memchr(data + from, '\n', limit - from) : NULL;
  if (nl != NULL) {
    out->off = 0;
    out->len = out->used = (size_t)(nl - data) + 1;
    if (scanned) *scanned = 0;
    return LE_FRAME_OK;
  }
  if (n >= max) return LE_FRAME_TOOBIG;
  if (scanned) *scanned = n;
  return LE_FRAME_MORE;
}

le_frame_status le_frame_decode(le_packet mode, size_t max, const char *data,
                                size_t n, size_t *scanned, le_frame *out) {
  switch (mode) {
  case LE_PACKET_1:
  case LE_PACKET_2:
  case LE_PACKET_4: return decode_length((size_t)mode, max, data, n, out);
  case LE_PACKET_LINE: return decode_line(max, data, n, scanned, out);
  case LE_PACKET_RAW:
  default:
    if (n == 0) return LE_FRAME_MORE;
    out->off = 0;
    out->len = out->used = n;
    return LE_FRAME_OK;
  }
}

int le_frame_header(le_packet mode, size_t len, unsigned char *hdr) {
  if (mode != LE_PACKET_1 && mode != LE_PACKET_2 && mode != LE_PACKET_4)
    return 0;
  int hlen = (int)mode;
  if (hlen < 8 && (uint64_t)len >> (8 * hlen) != 0) return -1;
  for (int i = hlen - 1; i >= 0; i--) {
    hdr[i] = (unsigned char)(len & 0xff);
    len >>= 8;
  }
  return hlen;
}

int le_packet_parse(const char *text, long number, le_packet *out) {
  if (text == NULL) {
    if (number != 0 && number != 1 && number != 2 && number != 4) return -1;
    *out = (le_packet)number;
    return 0;
  }
  if (strcmp(text, "raw") == 0)
    *out = LE_PACKET_RAW;
  else if (strcmp(text, "line") == 0)
    *out = LE_PACKET_LINE;
  else
    return -1;
  return 0;
}

const char *le_packet_name(le_packet mode) {
  switch (mode) {
  case LE_PACKET_1: return "1";
  case LE_PACKET_2: return "2";
  case LE_PACKET_4: return "4";
  case LE_PACKET_LINE: return "line";
  default: return "raw";
  }
}
