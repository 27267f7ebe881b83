package intake

import (
	"strconv"
	"unicode/utf8"
)

// Validating JSON that Parse does not otherwise look at: unknown members, and the
// elements of object_ids that are not ids. What is valid is what encoding/json
// accepts, so that Parse and encoding/json agree on what is JSON.

// maxDepth is the deepest nesting of arrays and objects that Parse accepts.
// It is encoding/json's limit.
const maxDepth = 10000

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
				return i, tooDeep(i)
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

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
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
