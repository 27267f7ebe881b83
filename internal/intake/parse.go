package intake

import (
	"encoding/binary"
	"fmt"
	"net/http"
	"strconv"
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

// maxDepth is the deepest nesting of arrays and objects that Parse accepts.
// It is encoding/json's limit, so Parse and encoding/json agree on what is JSON.
const maxDepth = 10000

// maxID is the largest object id: ids are Postgres bigints.
const maxID = 1<<63 - 1

// idsKey is the member that holds the ids.
const idsKey = "object_ids"

// ParseError is a rejected body: Status is 400 or 413, Msg is a short human
// sentence for the {"error": Msg} reply.
type ParseError struct {
	Status int
	Msg    string
}

func (e *ParseError) Error() string { return e.Msg }

func badRequest(msg string) *ParseError {
	return &ParseError{Status: http.StatusBadRequest, Msg: msg}
}

// Parse appends the ids of body to dst[:0] and returns it. maxIDs > 0 caps the
// count: more ids are a 413, detected at the first id over the cap, after which
// nothing more is appended (the rest of the body is only validated, so that a
// body that is not JSON at all is a 400 whatever it holds, as in encoding/json).
// On error it returns dst[:0], so the caller keeps its buffer; the error is
// always a *ParseError.
func Parse(body []byte, maxIDs int, dst []int64) ([]int64, error) {
	p := parser{b: body}
	ids, err := p.parse(maxIDs, dst[:0])
	// Outside strings, valid JSON is ASCII, and p.high records any other byte
	// seen inside a string; so a body that parsed without p.high is valid
	// UTF-8, and the full check runs only on bodies that need it.
	if (err != nil || p.high) && !utf8.Valid(body) {
		return dst[:0], badRequest("body is not valid UTF-8")
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

// problem is what is wrong with an object_ids value that is valid JSON.
type problem uint8

const (
	fine problem = iota
	tooMany
	isNull
	notArray
	negative
	fractional
	outOfRange
	isString
	isBool
	isNullElem
	isObject
	isArray
)

func (k problem) error(index, maxIDs int) *ParseError {
	var why string
	switch k {
	case tooMany:
		return &ParseError{
			Status: http.StatusRequestEntityTooLarge,
			Msg:    "too many object ids (limit " + strconv.Itoa(maxIDs) + ")",
		}
	case isNull:
		return badRequest("object_ids must not be null")
	case notArray:
		return badRequest("object_ids must be an array of integers")
	case negative:
		why = "is negative"
	case fractional:
		why = "is not an integer (it has a fraction or an exponent)"
	case outOfRange:
		why = "is out of range (the largest id is 9223372036854775807)"
	case isString:
		why = "is a string, not an integer"
	case isBool:
		why = "is a boolean, not an integer"
	case isNullElem:
		why = "is null, not an integer"
	case isObject:
		why = "is an object, not an integer"
	case isArray:
		why = "is an array, not an integer"
	}
	return badRequest(fmt.Sprintf("object_ids[%d] %s", index, why))
}

func (p *parser) parse(maxIDs int, dst []int64) ([]int64, *ParseError) {
	b := p.b
	i := skipWS(b, 0)
	if i == len(b) {
		return dst, badRequest("body is empty: want a JSON object")
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
		return dst, badRequest("body must be a JSON object")
	}

	var (
		found   bool
		pending *ParseError // what is wrong with the latest object_ids, if anything
		err     *ParseError
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
				dst, pending, i, err = p.ids(i, maxIDs, dst[:0])
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
		return dst, badRequest("object_ids is missing")
	}
	if pending != nil {
		return dst, pending
	}
	return dst, nil
}

// ids parses the value of an object_ids member at b[i] into dst. A value that
// is valid JSON but not a valid list of ids gives a problem, as pending, and is
// still scanned to its end: a later object_ids may replace it, and what follows
// must still be valid JSON. err is a syntax error, which ends the parse.
func (p *parser) ids(i, maxIDs int, dst []int64) (_ []int64, pending *ParseError, _ int, err *ParseError) {
	b := p.b
	if i >= len(b) {
		return dst, nil, i, p.syntax(i, "a value")
	}
	switch b[i] {
	case '[':
	case 'n':
		i, err = p.literal(i, "null")
		return dst, isNull.error(0, 0), i, err
	default:
		i, err = p.skipValue(i, 1)
		return dst, notArray.error(0, 0), i, err
	}
	if i = skipWS(b, i+1); i < len(b) && b[i] == ']' {
		return dst, nil, i + 1, nil
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
			return dst, nil, i, p.syntax(i, "an id")
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
					return dst, nil, i, err
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
				return dst, nil, i, err
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
		return dst, nil, i, p.syntax(i, "',' or ']' after an id")
	}
	if first != fine {
		return dst, first.error(at, maxIDs), i, nil
	}
	return dst, nil, i, nil
}

// skipValue validates the JSON value at b[i] and returns the offset after it.
// depth is the number of arrays and objects around it.
func (p *parser) skipValue(i, depth int) (int, *ParseError) {
	b := p.b
	if i >= len(b) {
		return i, p.syntax(i, "a value")
	}
	switch b[i] {
	case '"':
		return p.skipString(i)
	case '{', '[':
		return p.skipContainer(i, depth)
	case 't':
		return p.literal(i, "true")
	case 'f':
		return p.literal(i, "false")
	case 'n':
		return p.literal(i, "null")
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return p.number(i)
	}
	return i, p.syntax(i, "a value")
}

// skipContainer validates the array or object at b[i] without recursion, so
// that deep nesting costs a bounded stack: which open containers are objects
// is a bit set as deep as maxDepth allows.
func (p *parser) skipContainer(i, depth int) (int, *ParseError) {
	b := p.b
	var (
		object [maxDepth/64 + 1]uint64 // bit k: the k-th open container is an object
		open   int                     // containers opened here and not yet closed
		err    *ParseError
	)
	for {
		// b[i] starts a value.
		if c := b[i]; c == '{' || c == '[' {
			if depth+open >= maxDepth {
				return i, badRequest(fmt.Sprintf("malformed JSON at byte %d: nested deeper than %d levels", i, maxDepth))
			}
			if c == '{' {
				object[open/64] |= 1 << (open % 64)
			} else {
				object[open/64] &^= 1 << (open % 64)
			}
			open++
			i = skipWS(b, i+1)
			if i < len(b) && b[i] == c+2 { // '{'+2 == '}', '['+2 == ']'
				i++
				open--
			} else if c == '{' {
				if i, err = p.memberStart(i); err != nil {
					return i, err
				}
				continue
			} else {
				if i >= len(b) {
					return i, p.syntax(i, "a value")
				}
				continue
			}
		} else if i, err = p.skipValue(i, depth+open); err != nil {
			return i, err
		}

		// After a value: close what ends here, then find the next value.
		for {
			if open == 0 {
				return i, nil
			}
			if i = skipWS(b, i); i >= len(b) {
				return i, p.syntax(i, "',' or a closing bracket")
			}
			inObject := object[(open-1)/64]>>((open-1)%64)&1 == 1
			c := b[i]
			if c == ',' {
				i = skipWS(b, i+1)
				if inObject {
					if i, err = p.memberStart(i); err != nil {
						return i, err
					}
				} else if i >= len(b) {
					return i, p.syntax(i, "a value")
				}
				break
			}
			if inObject && c == '}' || !inObject && c == ']' {
				i++
				open--
				continue
			}
			if inObject {
				return i, p.syntax(i, "',' or '}'")
			}
			return i, p.syntax(i, "',' or ']'")
		}
	}
}

// memberStart skips `"key" :` of an ignored member and returns the offset of
// its value, which is not past the end.
func (p *parser) memberStart(i int) (int, *ParseError) {
	b := p.b
	if i >= len(b) || b[i] != '"' {
		return i, p.syntax(i, "a string key")
	}
	i, err := p.skipString(i)
	if err != nil {
		return i, err
	}
	if i = skipWS(b, i); i >= len(b) || b[i] != ':' {
		return i, p.syntax(i, "':' after the key")
	}
	if i = skipWS(b, i+1); i >= len(b) {
		return i, p.syntax(i, "a value")
	}
	return i, nil
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

// skipString validates the string at b[i] (a '"') and returns the offset after it.
func (p *parser) skipString(i int) (int, *ParseError) {
	b := p.b
	i++
	for i < len(b) {
		c := b[i]
		if plain[c] {
			i++
			continue
		}
		switch {
		case c == '"':
			return i + 1, nil
		case c == '\\':
			var err *ParseError
			if i, _, err = p.escape(i); err != nil {
				return i, err
			}
		case c < 0x20:
			return i, p.syntax(i, "no control characters in a string")
		default:
			p.high = true
			i++
		}
	}
	return i, p.syntax(i, "'\"' to end the string")
}

// escape decodes the escape sequence at b[i] (a '\\'). Like encoding/json it
// accepts lone surrogates in \uXXXX (they decode to U+FFFD).
func (p *parser) escape(i int) (int, rune, *ParseError) {
	b := p.b
	if i+1 >= len(b) {
		return i + 1, 0, p.syntax(i+1, "an escape sequence")
	}
	switch c := b[i+1]; c {
	case '"', '\\', '/':
		return i + 2, rune(c), nil
	case 'b':
		return i + 2, '\b', nil
	case 'f':
		return i + 2, '\f', nil
	case 'n':
		return i + 2, '\n', nil
	case 'r':
		return i + 2, '\r', nil
	case 't':
		return i + 2, '\t', nil
	case 'u':
		var r rune
		for j := i + 2; j < i+6; j++ {
			if j >= len(b) {
				return j, 0, p.syntax(j, "a hex digit in \\u escape")
			}
			var d rune
			switch c := b[j]; {
			case '0' <= c && c <= '9':
				d = rune(c - '0')
			case 'a' <= c && c <= 'f':
				d = rune(c - 'a' + 10)
			case 'A' <= c && c <= 'F':
				d = rune(c - 'A' + 10)
			default:
				return j, 0, p.syntax(j, "a hex digit in \\u escape")
			}
			r = r<<4 | d
		}
		return i + 6, r, nil
	}
	return i + 1, 0, p.syntax(i+1, "an escape sequence")
}

// number validates the number at b[i] (a '-' or a digit).
func (p *parser) number(i int) (int, *ParseError) {
	b := p.b
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	default:
		return i, p.syntax(i, "a digit")
	}
	return p.numberTail(i)
}

// numberTail validates the optional fraction and exponent at b[i].
func (p *parser) numberTail(i int) (int, *ParseError) {
	b := p.b
	if i < len(b) && b[i] == '.' {
		if i++; i >= len(b) || !isDigit(b[i]) {
			return i, p.syntax(i, "a digit after the decimal point")
		}
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		if i++; i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return i, p.syntax(i, "a digit in the exponent")
		}
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	}
	return i, nil
}

// literal validates the literal lit (true, false or null) at b[i].
func (p *parser) literal(i int, lit string) (int, *ParseError) {
	b := p.b
	for k := 0; k < len(lit); k++ {
		if i+k >= len(b) || b[i+k] != lit[k] {
			return i + k, p.syntax(i+k, strconv.Quote(lit))
		}
	}
	return i + len(lit), nil
}

// syntax describes malformed JSON at b[i]; i == len(b) is a truncated body.
func (p *parser) syntax(i int, want string) *ParseError {
	if i >= len(p.b) {
		return badRequest(fmt.Sprintf("malformed JSON: body ends at byte %d, want %s (truncated?)", len(p.b), want))
	}
	var got string
	if c := p.b[i]; c < utf8.RuneSelf {
		got = strconv.QuoteRune(rune(c))
	} else {
		r, _ := utf8.DecodeRune(p.b[i:])
		got = strconv.QuoteRune(r)
	}
	return badRequest(fmt.Sprintf("malformed JSON at byte %d: got %s, want %s", i, got, want))
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
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

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// plain marks the string bytes that need no attention: not '"', '\\', a
// control character or a byte of a multi-byte UTF-8 sequence.
var plain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()
