import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from alignflow.llm.structured import ParseError, extract_json, parse_structured


class Rating(BaseModel):
    rationale: str
    rating: int = Field(ge=1, le=5)


@pytest.mark.parametrize("text", [
    '{"rationale": "ok", "rating": 4}',
    'Sure! Here it is:\n```json\n{"rationale": "ok", "rating": 4}\n```',
    'The answer is {"rationale": "ok", "rating": 4} and that is all.',
    "{'rationale': 'ok', 'rating': 4,}",
    '{"rationale": "ok", "rating": 4',
])
def test_lenient_extraction(text):
    assert parse_structured(text, Rating) == Rating(rationale="ok", rating=4)


@pytest.mark.parametrize("text", ["no json here", '{"rationale": "ok", "rating": 9}', ""])
def test_invalid_output_is_a_parse_error(text):
    with pytest.raises(ParseError):
        parse_structured(text, Rating)


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.integers() | st.text(max_size=10), max_size=5),
       st.text(alphabet="abc .:\n", max_size=20))
def test_any_object_with_prose_around_it_is_found(obj, prose):
    import json

    assert extract_json(prose.replace("{", "") + json.dumps(obj) + "\n") == obj
