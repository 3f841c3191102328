package codec

import (
	"strconv"
	"strings"

	"github.com/tideline-cdc/tideline/pkg/change"
)

// OrderHeader is the Kafka header that carries Order.
const OrderHeader = "tideline.order"

// SchemaHeader is the Kafka header that carries the id of the record's
// table shape in the schemas topic.
const SchemaHeader = "tideline.schema"

const hexLower = "0123456789abcdef"

func appendHex(dst []byte, v uint64, digits int) []byte {
	for i := digits - 1; i >= 0; i-- {
		dst = append(dst, hexLower[(v>>(uint(i)*4))&0xf])
	}
	return dst
}

// Order returns a token that sorts, bytewise, like ev's position in its
// source's log (fixed-width lower-case hex):
//
//   - PostgreSQL: the transaction's commit LSN, then the event's order in
//     the transaction; snapshot rows carry the snapshot's consistent point
//     and 0, which sorts before every change streamed after it.
//   - MySQL: the binlog file's number, the event's position in it and the
//     row's index in the event; snapshot rows carry the snapshot's binlog
//     position.
//
// Sinks compare tokens of one pipeline only; they never parse them.
func Order(ev *change.Event) []byte {
	return appendOrder(make([]byte, 0, orderLen), ev)
}

// orderLen is the length of the longer (MySQL) Order token.
const orderLen = 32

func appendOrder(b []byte, ev *change.Event) []byte {
	if ev.Source.Connector == "mysql" {
		b = appendHex(b, BinlogSeq(ev.Source.File), 8)
		b = appendHex(b, ev.Source.Pos, 16)
		return appendHex(b, uint64(uint32(ev.Source.Row)), 8)
	}
	lsn := ev.TxLSN
	if ev.TxOrder == 0 {
		lsn = ev.Source.LSN
	}
	b = appendHex(b, lsn, 16)
	return appendHex(b, uint64(ev.TxOrder), 8)
}

// BinlogSeq is the number of a binlog file (mysql-bin.000042 -> 42).
func BinlogSeq(file string) uint64 {
	n, _ := strconv.ParseUint(file[strings.LastIndexByte(file, '.')+1:], 10, 64)
	return n
}
