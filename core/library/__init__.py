"""Each chat's own pictures (`/library on`, `/save`): their vectors and Telegram references
in the `<COLLECTION>-library` collection, searched only in the chat that posted them."""
