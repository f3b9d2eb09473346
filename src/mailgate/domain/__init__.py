"""Pure data and vocabularies shared by every layer; imports nothing else of mailgate."""
