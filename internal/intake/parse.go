package intake

import (
	"encoding/binary"
	"unicode/utf8"
)

// The request body of POST /callback is {"object_ids":[1,2,3]}. At ~10,000
// requests/s with ~200 ids each it is the hottest code in the service, so Parse
// is a single pass over the bytes that appends into a caller-owned slice and
// allocates nothing unless it rejects the body.
//
// The semantics are encoding/json's (see the reference in parse_test.go, which
// the fuzz test holds Parse to): the body is valid UTF-8 holding exactly one
// JSON value, nested at most maxDepth deep; the last "object_ids" member wins;
// unknown members are validated and ignored.
//
// This file finds object_ids and reads its ids; validate.go validates the rest of
// the JSON; parseerror.go words what is wrong.

// maxID is the largest object id: ids are Postgres bigints.
const maxID = 1<<63 - 1

// idsKey is the member that holds the ids.
const idsKey = "object_ids"

// Parse appends the ids of body to dst[:0] and returns it. maxIDs > 0 caps the
// count: more ids are too many (ParseError.TooManyIDs), detected at the first id
// over the cap, after which nothing more is appended (the rest of the body is only
// validated, so that a body that is not JSON at all is invalid whatever it holds,
// as in encoding/json). On error it returns dst[:0], so the caller keeps its
// buffer; the error is always a *ParseError.
func Parse(body []byte, maxIDs int, dst []int64) ([]int64, error) {
	p := parser{b: body}
	ids, err := p.parse(maxIDs, dst[:0])
	// Outside strings, valid JSON is ASCII, and p.high records any other byte
	// seen inside a string; so a body that parsed without p.high is valid
	// UTF-8, and the full check runs only on bodies that need it.
	if (err != nil || p.high) && !utf8.Valid(body) {
		return dst[:0], invalid("body is not valid UTF-8")
	}
	if err != nil {
		return dst[:0], err
	}
	return ids, nil
}

// parser holds the body and what was learnt about it; its methods take and
// return the read offset so that the hot loops keep it in a register.
type parser struct {
	b    []byte
	high bool // a byte >= 0x80 was seen inside a string
}

// verdict is what reading one object_ids value found wrong with it: problem (fine
// if nothing) and at, the index of the element it is about. It judges that member
// alone: a later object_ids may replace it, so it is worded only if it stands.
type verdict struct {
	problem problem
	at      int
}

// parse reads the body's one object member by member and the ids of its last
// object_ids, and validates everything else.
func (p *parser) parse(maxIDs int, dst []int64) ([]int64, *ParseError) {
	b := p.b
	i := skipWS(b, 0)
	if i == len(b) {
		return dst, invalid("body is empty: want a JSON object")
	}
	if b[i] != '{' {
		// Validate first: malformed JSON is reported as such, as encoding/json does.
		i, err := p.skipValue(i, 0)
		if err != nil {
			return dst, err
		}
		if i = skipWS(b, i); i < len(b) {
			return dst, p.syntax(i, "end of body after the JSON value")
		}
		return dst, invalid("body must be a JSON object")
	}

	var (
		found bool
		last  verdict // on the latest object_ids: the last one wins
		err   *ParseError
	)
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		i++
	} else {
		for {
			if i >= len(b) || b[i] != '"' {
				return dst, p.syntax(i, "a string key")
			}
			var ids bool
			if ids, i, err = p.key(i); err != nil {
				return dst, err
			}
			if i = skipWS(b, i); i >= len(b) || b[i] != ':' {
				return dst, p.syntax(i, "':' after the key")
			}
			i = skipWS(b, i+1)
			if ids {
				// The last object_ids wins, like encoding/json: forget the earlier one.
				found = true
				dst, i, last, err = p.ids(i, maxIDs, dst[:0])
			} else {
				i, err = p.skipValue(i, 1)
			}
			if err != nil {
				return dst, err
			}
			if i = skipWS(b, i); i < len(b) && b[i] == ',' {
				i = skipWS(b, i+1)
				continue
			}
			if i < len(b) && b[i] == '}' {
				i++
				break
			}
			return dst, p.syntax(i, "',' or '}' after the member")
		}
	}
	if i = skipWS(b, i); i < len(b) {
		return dst, p.syntax(i, "end of body after the JSON object")
	}
	if !found {
		return dst, invalid("object_ids is missing")
	}
	if last.problem != fine {
		return dst, last.problem.error(last.at, maxIDs)
	}
	return dst, nil
}

// ids reads the value of an object_ids member at b[i] into dst, and returns dst and
// the offset after the value. A value that is valid JSON but not a valid list of ids
// is still read to its end, and its verdict says what is wrong: a later object_ids
// may replace it, and what follows must still be valid JSON. The error is malformed
// JSON, which ends the parse.
func (p *parser) ids(i, maxIDs int, dst []int64) ([]int64, int, verdict, *ParseError) {
	b := p.b
	if i >= len(b) {
		return dst, i, verdict{}, p.syntax(i, "a value")
	}
	var err *ParseError
	switch b[i] {
	case '[':
	case 'n':
		i, err = p.literal(i, "null")
		return dst, i, verdict{problem: isNull}, err
	default:
		i, err = p.skipValue(i, 1)
		return dst, i, verdict{problem: notArray}, err
	}
	if i = skipWS(b, i+1); i < len(b) && b[i] == ']' {
		return dst, i + 1, verdict{}, nil
	}

	var (
		first   problem // the first problem in the array, at index at
		at      int
		count   int // elements so far
		overCap = maxIDs
	)
	if maxIDs <= 0 {
		overCap = -1
	}
	for {
		if i >= len(b) {
			return dst, i, verdict{}, p.syntax(i, "an id")
		}
		var (
			n    uint64
			kind problem
		)
		if d := b[i] - '0'; d <= 9 {
			// The common case: a non-negative integer. JSON has no leading
			// zeros, so after a 0 the number is over (or a syntax error that
			// the delimiter check below reports).
			start := i
			n = uint64(d)
			i++
			if d != 0 {
				// Large ids have up to 19 digits: take them 8 at a time.
				for i+8 <= len(b) {
					v, ok := eightDigits(binary.LittleEndian.Uint64(b[i:]))
					if !ok {
						break
					}
					n = n*100_000_000 + v
					i += 8
				}
				for i < len(b) {
					d := b[i] - '0'
					if d > 9 {
						break
					}
					n = n*10 + uint64(d)
					i++
				}
			}
			// 19 digits fit in a uint64 (< 1.9e19), more may have wrapped.
			if digits := i - start; digits >= 19 && (digits > 19 || n > maxID) {
				kind = outOfRange
			}
			if i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
				if i, err = p.numberTail(i); err != nil {
					return dst, i, verdict{}, err
				}
				kind = fractional
			}
		} else {
			switch b[i] {
			case '-':
				kind = negative
			case '"':
				kind = isString
			case 't', 'f':
				kind = isBool
			case 'n':
				kind = isNullElem
			case '{':
				kind = isObject
			case '[':
				kind = isArray
			}
			if i, err = p.skipValue(i, 2); err != nil {
				return dst, i, verdict{}, err
			}
		}
		if first == fine {
			switch {
			case count == overCap:
				first, at = tooMany, count
			case kind != fine:
				first, at = kind, count
			default:
				dst = append(dst, int64(n))
			}
		}
		count++

		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
			continue
		}
		if i = skipWS(b, i); i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
			continue
		}
		if i < len(b) && b[i] == ']' {
			i++
			break
		}
		return dst, i, verdict{}, p.syntax(i, "',' or ']' after an id")
	}
	return dst, i, verdict{problem: first, at: at}, nil
}

// key scans the object key at b[i] (a '"') and reports whether it is
// "object_ids" once its escapes are decoded.
func (p *parser) key(i int) (bool, int, *ParseError) {
	b := p.b
	if end := i + 1 + len(idsKey); end < len(b) && b[end] == '"' && string(b[i+1:end]) == idsKey {
		return true, end + 1, nil
	}
	i++
	matched, match := 0, true
	for i < len(b) {
		var r rune
		switch c := b[i]; {
		case c == '"':
			return match && matched == len(idsKey), i + 1, nil
		case c == '\\':
			var err *ParseError
			if i, r, err = p.escape(i); err != nil {
				return false, i, err
			}
		case c < 0x20:
			return false, i, p.syntax(i, "no control characters in a string")
		default:
			if c >= utf8.RuneSelf {
				p.high = true
			}
			r = rune(c) // a byte >= 0x80 never matches the ASCII key
			i++
		}
		if match && matched < len(idsKey) && r == rune(idsKey[matched]) {
			matched++
		} else {
			match = false
		}
	}
	return false, i, p.syntax(i, "'\"' to end the string")
}

// eightDigits is the value of 8 ASCII digits loaded little-endian, or false if
// any byte is not a digit (the SWAR method of simdjson's parse_eight_digits).
func eightDigits(v uint64) (uint64, bool) {
	const ones = 0x0101010101010101
	if v&(0xF0*ones)|(v+0x06*ones)&(0xF0*ones)>>4 != 0x33*ones {
		return 0, false
	}
	v -= 0x30 * ones
	v = v*10 + v>>8 // each 16-bit lane: two digits
	v = ((v&0x000000FF000000FF)*(100+1000000<<32) + (v>>16&0x000000FF000000FF)*(1+10000<<32)) >> 32
	return v, true
}
