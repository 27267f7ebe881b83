package intake

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// referenceParse defines what Parse must do, built on encoding/json: a body is
// accepted or rejected, and with which status, exactly as here. Only the
// messages differ (Parse says where; this says what).
func referenceParse(body []byte, maxIDs int) ([]int64, *ParseError) {
	bad := func(msg string) *ParseError { return &ParseError{Msg: msg} }
	if !utf8.Valid(body) {
		return nil, bad("body is not valid UTF-8")
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(body, &members); err != nil {
		if _, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
			return nil, bad("body must be a JSON object")
		}
		return nil, bad("malformed JSON: " + err.Error())
	}
	if members == nil { // the body is null
		return nil, bad("body must be a JSON object")
	}
	raw, ok := members["object_ids"]
	if !ok {
		return nil, bad("object_ids is missing")
	}
	if string(raw) == "null" {
		return nil, bad("object_ids must not be null")
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, bad("object_ids must be an array of integers")
	}
	ids := []int64{}
	for i, e := range elems {
		if maxIDs > 0 && i >= maxIDs {
			return nil, &ParseError{TooManyIDs: true, Msg: fmt.Sprintf("too many object ids (limit %d)", maxIDs)}
		}
		switch {
		case e[0] == '-':
			return nil, bad(fmt.Sprintf("object_ids[%d] is negative", i))
		case e[0] < '0' || e[0] > '9':
			return nil, bad(fmt.Sprintf("object_ids[%d] is not an integer", i))
		case bytes.ContainsAny(e, ".eE"):
			return nil, bad(fmt.Sprintf("object_ids[%d] is not an integer", i))
		}
		id, err := strconv.ParseInt(string(e), 10, 64)
		if err != nil {
			return nil, bad(fmt.Sprintf("object_ids[%d] is out of range", i))
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// parse runs Parse with a dirty destination, to show that dst[:0] is used.
func parse(t testing.TB, body string, maxIDs int) ([]int64, *ParseError) {
	t.Helper()
	ids, err := Parse([]byte(body), maxIDs, []int64{-7, -7, -7})
	if err == nil {
		return ids, nil
	}
	pe, ok := errors.AsType[*ParseError](err)
	if !ok {
		t.Fatalf("Parse(%q): error %T %v, want *ParseError", body, err, err)
	}
	if len(ids) != 0 {
		t.Errorf("Parse(%q): rejected but returned ids %v", body, ids)
	}
	return nil, pe
}

// statusOf is the HTTP status the handler answers err with.
func statusOf(err *ParseError) int {
	status, _ := parseRejection(err)
	return status
}

func TestParse_accepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
		want []int64
	}{
		{"list_of_ids", `{"object_ids":[1,2,3]}`, []int64{1, 2, 3}},
		{"empty_list", `{"object_ids":[]}`, []int64{}},
		{"empty_list_with_spaces", `{"object_ids":[ ]}`, []int64{}},
		{"zero", `{"object_ids":[0]}`, []int64{0}},
		{"duplicates_kept_in_order", `{"object_ids":[5,5,0,5]}`, []int64{5, 5, 0, 5}},
		{"max_int64", `{"object_ids":[9223372036854775807]}`, []int64{9223372036854775807}},
		{"nineteen_digits", `{"object_ids":[1000000000000000000]}`, []int64{1000000000000000000}},
		{"digits_around_eight", `{"object_ids":[1234567,12345678,123456789,1234567890123456,98765432109876543]}`,
			[]int64{1234567, 12345678, 123456789, 1234567890123456, 98765432109876543}},
		{"whitespace_everywhere", " \t\r\n{ \n\"object_ids\"\t: \r[ 1 ,\n2\t, 3 ] \n} \r\n\t", []int64{1, 2, 3}},
		{"escaped_key", `{"\u006fbject_ids":[4]}`, []int64{4}},
		{"fully_escaped_key", `{"\u006F\u0062\u006a\u0065\u0063\u0074\u005f\u0069\u0064\u0073":[4]}`, []int64{4}},
		{"duplicate_key_last_wins", `{"object_ids":[1],"object_ids":[2,3]}`, []int64{2, 3}},
		{"bad_earlier_duplicate_is_replaced", `{"object_ids":[-1,"x"],"object_ids":[2]}`, []int64{2}},
		{"null_earlier_duplicate_is_replaced", `{"object_ids":null,"object_ids":[2]}`, []int64{2}},
		{"unknown_string", `{"note":"hi \"there\" \\ \/ \b\f\n\r\t \u00e9 \ud800 é","object_ids":[1]}`, []int64{1}},
		{"unknown_number", `{"n":-12.5e+3,"object_ids":[1],"m":0}`, []int64{1}},
		{"unknown_literals", `{"a":true,"b":false,"c":null,"object_ids":[1]}`, []int64{1}},
		{"unknown_object", `{"o":{"x":{"y":[1,{"z":[]}]},"e":{}},"object_ids":[1]}`, []int64{1}},
		{"unknown_array", `{"object_ids":[1],"a":[[],[[1,"s",null]],{}]}`, []int64{1}},
		{"unknown_key_like_ids", `{"Object_ids":[-1],"object_ids ":"x","object_id":null,"object_idss":1,"object_ids":[7]}`, []int64{7}},
		{"unknown_non_ascii_key", `{"ключ":"значение","object_ids":[8]}`, []int64{8}},
		{"unknown_deep_nesting_at_limit", `{"a":` + strings.Repeat("[", maxDepth-1) + strings.Repeat("]", maxDepth-1) + `,"object_ids":[1]}`, []int64{1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parse(t, tt.body, 10)
			if err != nil {
				t.Fatalf("Parse(%.80q): %d %q, want ids %v", tt.body, statusOf(err), err.Msg, tt.want)
			}
			if !slices.Equal(got, tt.want) || got == nil {
				t.Errorf("Parse(%.80q) = %#v, want %v", tt.body, got, tt.want)
			}
			ref, rerr := referenceParse([]byte(tt.body), 10)
			if rerr != nil || !slices.Equal(ref, tt.want) {
				t.Errorf("reference disagrees: %v, %v", ref, rerr)
			}
		})
	}
}

func TestParse_rejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		body   string
		maxIDs int
		status int
		msg    string // the message contains this
	}{
		{"invalid_utf8_in_string", "{\"x\":\"\xff\",\"object_ids\":[1]}", 0, 400, "not valid UTF-8"},
		{"invalid_utf8_after_body", "{\"object_ids\":[1]}\xc3", 0, 400, "not valid UTF-8"},
		{"utf8_encoded_surrogate", "{\"x\":\"\xed\xa0\x80\",\"object_ids\":[1]}", 0, 400, "not valid UTF-8"},
		{"empty_body", ``, 0, 400, "empty"},
		{"whitespace_body", " \n", 0, 400, "empty"},
		{"array_body", `[1,2,3]`, 0, 400, "must be a JSON object"},
		{"string_body", `"object_ids"`, 0, 400, "must be a JSON object"},
		{"number_body", `1`, 0, 400, "must be a JSON object"},
		{"null_body", `null`, 0, 400, "must be a JSON object"},
		{"malformed_non_object_body", `[1,`, 0, 400, "malformed JSON"},
		{"truncated", `{"object_ids":[1,2`, 0, 400, "truncated"},
		{"truncated_in_key", `{"object_i`, 0, 400, "truncated"},
		{"trailing_comma", `{"object_ids":[1,2,]}`, 0, 400, "byte 19"},
		{"trailing_member_comma", `{"object_ids":[1],}`, 0, 400, "byte 18"},
		{"missing_colon", `{"object_ids" [1]}`, 0, 400, "':'"},
		{"single_quotes", `{'object_ids':[1]}`, 0, 400, "malformed JSON at byte 1"},
		{"trailing_value", `{"object_ids":[1]} {}`, 0, 400, "end of body"},
		{"trailing_garbage", `{"object_ids":[1]}x`, 0, 400, "byte 18"},
		{"leading_zero", `{"object_ids":[01]}`, 0, 400, "malformed JSON"},
		{"plus_sign", `{"object_ids":[+1]}`, 0, 400, "malformed JSON"},
		{"bare_minus", `{"object_ids":[-]}`, 0, 400, "malformed JSON"},
		{"hex_number", `{"object_ids":[0x10]}`, 0, 400, "malformed JSON"},
		{"bad_literal", `{"a":nul,"object_ids":[1]}`, 0, 400, "malformed JSON"},
		{"bad_escape", `{"a":"\x","object_ids":[1]}`, 0, 400, "escape"},
		{"short_unicode_escape", `{"a":"\u12","object_ids":[1]}`, 0, 400, "hex digit"},
		{"raw_control_character", "{\"a\":\"\t\",\"object_ids\":[1]}", 0, 400, "control character"},
		{"raw_newline_in_key", "{\"object\nids\":[1]}", 0, 400, "control character"},
		{"mismatched_brackets", `{"a":[1},"object_ids":[1]}`, 0, 400, "malformed JSON"},
		{"unclosed_unknown_object", `{"a":{"b":1,"object_ids":[1]}`, 0, 400, "truncated"},
		{"object_key_not_string", `{"a":{1:2},"object_ids":[1]}`, 0, 400, "string key"},
		{"nesting_too_deep", `{"a":` + strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth) + `,"object_ids":[1]}`, 0, 400, "deeper than 10000"},
		{"nesting_too_deep_in_ids", `{"object_ids":[` + strings.Repeat("[", maxDepth) + `]}`, 0, 400, "deeper than 10000"},
		{"nesting_huge_unclosed", strings.Repeat("[", 100_000), 0, 400, "deeper than 10000"},
		{"ids_missing", `{"ids":[1]}`, 0, 400, "object_ids is missing"},
		{"ids_missing_empty_object", `{}`, 0, 400, "object_ids is missing"},
		{"ids_case_differs", `{"Object_IDs":[1]}`, 0, 400, "object_ids is missing"},
		{"ids_null", `{"object_ids":null}`, 0, 400, "must not be null"},
		{"ids_null_last_wins", `{"object_ids":[1],"object_ids":null}`, 0, 400, "must not be null"},
		{"ids_string", `{"object_ids":"1,2"}`, 0, 400, "must be an array of integers"},
		{"ids_number", `{"object_ids":1}`, 0, 400, "must be an array of integers"},
		{"ids_object", `{"object_ids":{"0":1}}`, 0, 400, "must be an array of integers"},
		{"ids_bool", `{"object_ids":true}`, 0, 400, "must be an array of integers"},
		{"negative", `{"object_ids":[1,2,3,-1]}`, 0, 400, "object_ids[3] is negative"},
		{"negative_zero", `{"object_ids":[-0]}`, 0, 400, "object_ids[0] is negative"},
		{"fraction", `{"object_ids":[1.0]}`, 0, 400, "object_ids[0] is not an integer"},
		{"exponent", `{"object_ids":[1,1e2]}`, 0, 400, "object_ids[1] is not an integer"},
		{"eight_digits_then_fraction", `{"object_ids":[12345678.5]}`, 0, 400, "object_ids[0] is not an integer"},
		{"sixteen_digits_then_exponent", `{"object_ids":[1234567812345678e1]}`, 0, 400, "object_ids[0] is not an integer"},
		{"exponent_capital", `{"object_ids":[1E+2]}`, 0, 400, "object_ids[0] is not an integer"},
		{"over_int64", `{"object_ids":[9223372036854775808]}`, 0, 400, "object_ids[0] is out of range"},
		{"over_uint64", `{"object_ids":[18446744073709551616]}`, 0, 400, "object_ids[0] is out of range"},
		{"twenty_digits", `{"object_ids":[10000000000000000000]}`, 0, 400, "object_ids[0] is out of range"},
		{"huge_number", `{"object_ids":[` + strings.Repeat("9", 400) + `]}`, 0, 400, "object_ids[0] is out of range"},
		{"string_element", `{"object_ids":[1,"2"]}`, 0, 400, "object_ids[1] is a string"},
		{"bool_element", `{"object_ids":[true]}`, 0, 400, "object_ids[0] is a boolean"},
		{"null_element", `{"object_ids":[null]}`, 0, 400, "object_ids[0] is null"},
		{"object_element", `{"object_ids":[{"id":1}]}`, 0, 400, "object_ids[0] is an object"},
		{"array_element", `{"object_ids":[[1]]}`, 0, 400, "object_ids[0] is an array"},
		{"first_bad_element_is_named", `{"object_ids":[1,-2,1.5]}`, 0, 400, "object_ids[1] is negative"},
		{"bad_element_then_malformed", `{"object_ids":[-1,]}`, 0, 400, "malformed JSON"},
		{"too_many", `{"object_ids":[1,2,3,4]}`, 3, 413, "too many object ids (limit 3)"},
		{"too_many_beats_later_bad_element", `{"object_ids":[1,2,3,-4]}`, 3, 413, "limit 3"},
		{"earlier_bad_element_beats_too_many", `{"object_ids":[1,-2,3,4]}`, 3, 400, "object_ids[1] is negative"},
		{"too_many_then_malformed", `{"object_ids":[1,2,3,4,]}`, 3, 400, "malformed JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ids, err := parse(t, tt.body, tt.maxIDs)
			if err == nil {
				t.Fatalf("Parse(%.80q) = %v, want %d %q", tt.body, ids, tt.status, tt.msg)
			}
			if statusOf(err) != tt.status || !strings.Contains(err.Msg, tt.msg) {
				t.Errorf("Parse(%.80q): %d %q, want %d containing %q", tt.body, statusOf(err), err.Msg, tt.status, tt.msg)
			}
			if err.Error() != err.Msg {
				t.Errorf("Error() = %q, want Msg %q", err.Error(), err.Msg)
			}
			if _, rerr := referenceParse([]byte(tt.body), tt.maxIDs); rerr == nil || statusOf(rerr) != tt.status {
				t.Errorf("reference disagrees: %v", rerr)
			}
		})
	}
}

func TestParse_stopsAppendingAtLimit(t *testing.T) {
	t.Parallel()
	body := idsBody(1_000_000, func(i int) int64 { return int64(i) })
	dst := make([]int64, 0, 16)
	got, err := Parse(body, 16, dst)
	if pe, ok := errors.AsType[*ParseError](err); !ok || statusOf(pe) != http.StatusRequestEntityTooLarge {
		t.Fatalf("Parse(a million ids, limit 16): %v, want 413", err)
	}
	if len(got) != 0 || cap(got) != 16 {
		t.Errorf("got len %d cap %d, want the caller's empty buffer back (cap 16)", len(got), cap(got))
	}
}

func TestParse_allocatesNothingWithRoomInDst(t *testing.T) {
	// Not parallel: testing.AllocsPerRun refuses to run in a parallel test.
	body := idsBody(200, func(i int) int64 { return int64(i) * 46116860184273879 })
	dst := make([]int64, 0, 200)
	allocs := testing.AllocsPerRun(100, func() {
		var err error
		if dst, err = Parse(body, 10_000, dst); err != nil || len(dst) != 200 {
			t.Fatalf("Parse: %d ids, %v", len(dst), err)
		}
	})
	if allocs != 0 {
		t.Errorf("Parse allocated %v times per call, want 0", allocs)
	}
}

func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		`{"object_ids":[1,2,3]}`,
		`{"object_ids":[]}`,
		`{"object_ids":[0,9223372036854775807,9223372036854775808]}`,
		`{"object_ids":[-0,1.0,1e2,"1",null,true,{},[]]}`,
		`{"\u006fbject_ids":[1],"object_ids":null}`,
		`{"a":{"b":[{"c":"\ud800\"\\"}]},"object_ids":[1] }`,
		`[[[[{"a":1}]]]]`,
		"{\"object_ids\":[1]}\x00",
		"{\"x\":\"\xc3\xa9\xff\",\"object_ids\":[1]}",
		`null`,
		`{"object_ids":[12345678,123456789012345678,1234567890123456789,12345678.5,87654321e1,1234567:]}`,
	} {
		f.Add([]byte(seed), uint8(0))
		f.Add([]byte(seed), uint8(2))
	}
	f.Fuzz(func(t *testing.T, body []byte, limit uint8) {
		maxIDs := int(limit) // 0 means no limit
		want, wantErr := referenceParse(body, maxIDs)
		got, err := Parse(body, maxIDs, []int64{-1, -1, -1, -1})
		if err != nil {
			pe, ok := errors.AsType[*ParseError](err)
			if !ok || (statusOf(pe) != http.StatusBadRequest && statusOf(pe) != http.StatusRequestEntityTooLarge) || pe.Msg == "" {
				t.Fatalf("Parse(%q): bad error %#v", body, err)
			}
			if len(got) != 0 {
				t.Fatalf("Parse(%q): rejected but returned %v", body, got)
			}
			switch {
			case wantErr == nil:
				t.Fatalf("Parse(%q, %d) rejected with %d %q; reference accepts %v", body, maxIDs, statusOf(pe), pe.Msg, want)
			case statusOf(wantErr) != statusOf(pe):
				t.Fatalf("Parse(%q, %d) = %d %q; reference says %d %q", body, maxIDs, statusOf(pe), pe.Msg, statusOf(wantErr), wantErr.Msg)
			}
			return
		}
		if wantErr != nil {
			t.Fatalf("Parse(%q, %d) accepted %v; reference says %d %q", body, maxIDs, got, statusOf(wantErr), wantErr.Msg)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("Parse(%q, %d) = %v; reference says %v", body, maxIDs, got, want)
		}
	})
}

// idsBody is {"object_ids":[...]} with n ids from id(i).
func idsBody(n int, id func(i int) int64) []byte {
	b := []byte(`{"object_ids":[`)
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, id(i), 10)
	}
	return append(b, "]}"...)
}

// benchBodies are the two shapes that matter: the original tester's small ids,
// and ids spread over the whole int64 range (19 digits, the worst case).
func benchBodies() []struct {
	name string
	body []byte
} {
	r := rand.New(rand.NewPCG(1, 2))
	return []struct {
		name string
		body []byte
	}{
		{"200_small_ids", idsBody(200, func(i int) int64 { return int64(i % 100) })},
		{"200_large_ids", idsBody(200, func(int) int64 { return 1<<62 + r.Int64N(1<<62) })},
	}
}

func BenchmarkParse(b *testing.B) {
	for _, bb := range benchBodies() {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bb.body)))
			dst := make([]int64, 0, 256)
			for b.Loop() {
				var err error
				if dst, err = Parse(bb.body, 10_000, dst); err != nil || len(dst) != 200 {
					b.Fatalf("Parse: %d ids, %v", len(dst), err)
				}
			}
		})
	}
}

func BenchmarkParseEncodingJSON(b *testing.B) {
	for _, bb := range benchBodies() {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bb.body)))
			for b.Loop() {
				var v struct {
					ObjectIDs []int64 `json:"object_ids"`
				}
				if err := json.Unmarshal(bb.body, &v); err != nil || len(v.ObjectIDs) != 200 {
					b.Fatalf("Unmarshal: %d ids, %v", len(v.ObjectIDs), err)
				}
			}
		})
	}
}
