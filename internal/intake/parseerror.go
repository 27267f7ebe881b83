package intake

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

// ParseError is a rejected body. Msg is a short human sentence for the {"error": Msg}
// reply. TooManyIDs marks a body refused only for carrying more ids than allowed;
// every other ParseError is a body that is not a valid callback. The handler turns
// the two into HTTP statuses (parseRejection).
type ParseError struct {
	Msg        string
	TooManyIDs bool
}

func (e *ParseError) Error() string { return e.Msg }

// invalid is a body that is not a valid callback.
func invalid(msg string) *ParseError {
	return &ParseError{Msg: msg}
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

// error words k for the reply. index is the element it is about (for the problems
// of an element), maxIDs the cap that tooMany went over.
func (k problem) error(index, maxIDs int) *ParseError {
	var why string
	switch k {
	case tooMany:
		return &ParseError{
			Msg:        "too many object ids (limit " + strconv.Itoa(maxIDs) + ")",
			TooManyIDs: true,
		}
	case isNull:
		return invalid("object_ids must not be null")
	case notArray:
		return invalid("object_ids must be an array of integers")
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
	return invalid(fmt.Sprintf("object_ids[%d] %s", index, why))
}

// tooDeep is a container opened at b[i] beyond maxDepth.
func tooDeep(i int) *ParseError {
	return invalid(fmt.Sprintf("malformed JSON at byte %d: nested deeper than %d levels", i, maxDepth))
}

// syntax describes malformed JSON at b[i]; i == len(b) is a truncated body.
func (p *parser) syntax(i int, want string) *ParseError {
	if i >= len(p.b) {
		return invalid(fmt.Sprintf("malformed JSON: body ends at byte %d, want %s (truncated?)", len(p.b), want))
	}
	var got string
	if c := p.b[i]; c < utf8.RuneSelf {
		got = strconv.QuoteRune(rune(c))
	} else {
		r, _ := utf8.DecodeRune(p.b[i:])
		got = strconv.QuoteRune(r)
	}
	return invalid(fmt.Sprintf("malformed JSON at byte %d: got %s, want %s", i, got, want))
}
